//! The circuit breaker: ejects a backend that keeps failing, for growing periods.
