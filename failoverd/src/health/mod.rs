//! Health checks: probes, and the hysteresis that turns results into verdicts.
