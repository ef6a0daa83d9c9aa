//! Readiness without asking every service: counts kept by the service tasks themselves.

/// Counts of services and of ready services, kept by the service tasks themselves, so that
/// readiness (polled by `/readyz` and the systemd notifier) costs one load, not a status
/// round trip to every service.
///
/// Both counts live in one word (services in the high half, ready ones in the low half) so
/// that one load sees them consistently while services come and go on a reload.
#[derive(Default)]
pub struct Readiness(std::sync::atomic::AtomicU64);

impl Readiness {
    /// One service, in the high half.
    const SERVICE: u64 = 1 << 32;

    /// Whether every running service has its first verdicts.
    pub fn all_ready(&self) -> bool {
        let both = self.0.load(std::sync::atomic::Ordering::SeqCst);
        both & 0xffff_ffff == both >> 32
    }

    pub(super) fn service_started(&self) {
        self.0
            .fetch_add(Self::SERVICE, std::sync::atomic::Ordering::SeqCst);
    }

    pub(super) fn service_ready(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub(super) fn service_ended(&self, was_ready: bool) {
        self.0.fetch_sub(
            Self::SERVICE + u64::from(was_ready),
            std::sync::atomic::Ordering::SeqCst,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::Readiness;

    #[test]
    fn readiness_counts_services_that_come_and_go() {
        let r = Readiness::default();
        assert!(r.all_ready(), "no service: nothing to wait for");
        r.service_started();
        r.service_started();
        assert!(!r.all_ready());
        r.service_ready();
        assert!(!r.all_ready(), "one of two");
        r.service_ready();
        assert!(r.all_ready());
        // A reload replaces a ready service with a new one that has no verdicts yet.
        r.service_ended(true);
        r.service_started();
        assert!(!r.all_ready());
        r.service_ready();
        assert!(r.all_ready());
        r.service_ended(true);
        r.service_ended(true);
        assert!(r.all_ready());
    }
}
