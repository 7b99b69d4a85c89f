//! Which etcd endpoint to talk to: a sticky preferred member, and a table of members that
//! stopped answering, ejected for a while and probed back later.
//!
//! Like etcd's Go client, every endpoint given is used (in any order) and a failing one is
//! avoided; unlike it, a member that is merely silent (paused, overloaded, partitioned) is
//! noticed by a short deadline rather than only when a whole call or a lease TTL has gone by.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// First ejection of a member; each further one in a row doubles it, up to [`EJECT_MAX`].
pub(crate) const EJECT_MIN: Duration = Duration::from_secs(2);
pub(crate) const EJECT_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone)]
struct Member {
    /// Set while the member is ejected; it is used again only when no other member is left.
    ejected_until: Option<Instant>,
    /// Ejections in a row, without an answer in between.
    ejections: u32,
    /// A probe task is following this member.
    probing: bool,
    /// The id of the last probe started for this member: a probe whose id is not this one (or
    /// that follows a member no longer `probing`) has been superseded and ends.
    probe: u64,
    /// Ejected since it last answered a call: its keep-alive answers do not make it preferred
    /// (a probe's status answer does not clear this; a call answered does).
    suspect: bool,
}

impl Member {
    /// Ejected: within its period, or past it while its probe has not answered yet (a member
    /// that stays silent is not given calls each time its period ends).
    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until
            .is_some_and(|until| until > now || self.probing)
    }

    /// Whether `probe` is the probe following this member.
    fn follows(&self, probe: u64) -> bool {
        self.probing && self.probe == probe
    }
}

#[derive(Debug)]
struct Table {
    preferred: usize,
    members: Vec<Member>,
}

/// The health table of a connection's endpoints, by index.
#[derive(Debug)]
pub(crate) struct Health {
    table: Mutex<Table>,
}

/// What [`Health::eject`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Ejection {
    /// How long the member is avoided.
    pub(crate) period: Duration,
    /// The id of the probe the caller must start, when none is running for the member yet.
    pub(crate) start_probe: Option<u64>,
}

impl Health {
    pub(crate) fn new(endpoints: usize) -> Self {
        Health {
            table: Mutex::new(Table {
                preferred: 0,
                members: vec![Member::default(); endpoints],
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The endpoints to try, best first: the preferred one if it is not ejected, then the other
    /// members in their given order from it, then the ejected ones, the soonest back first.
    pub(crate) fn order(&self, now: Instant) -> Vec<usize> {
        let table = self.lock();
        let n = table.members.len();
        let mut healthy = Vec::with_capacity(n);
        let mut ejected = Vec::new();
        for k in 0..n {
            let i = (table.preferred + k) % n;
            match table.members[i].ejected_until {
                Some(until) if table.members[i].is_ejected(now) => ejected.push((until, i)),
                _ => healthy.push(i),
            }
        }
        ejected.sort();
        healthy.extend(ejected.into_iter().map(|(_, i)| i));
        healthy
    }

    /// Whether member `i` is ejected now.
    pub(crate) fn is_ejected(&self, i: usize, now: Instant) -> bool {
        self.lock()
            .members
            .get(i)
            .is_some_and(|m| m.is_ejected(now))
    }

    /// Member `i` answered a call: it is healthy and, being the one in use, preferred. A probe
    /// following it is superseded (a new ejection starts a new one, for the new period).
    pub(crate) fn answered(&self, i: usize) {
        let mut table = self.lock();
        if i >= table.members.len() {
            return;
        }
        let member = &mut table.members[i];
        member.ejected_until = None;
        member.ejections = 0;
        member.probing = false;
        member.suspect = false;
        table.preferred = i;
    }

    /// Member `i` answered a keep-alive: preferred unless it was ejected since it last
    /// answered a call. An ejected member stays so until its probe or a call says it is back,
    /// and only a call answered makes it preferred again: a member may keep answering
    /// keep-alives (which its leader answers) and status requests while it fails or holds calls
    /// (a defragmentation blocks its own reads and writes).
    pub(crate) fn streamed(&self, i: usize) {
        let mut table = self.lock();
        if table.members.get(i).is_some_and(|m| !m.suspect) {
            table.preferred = i;
        }
    }

    /// Probe `probe` of member `i` got an answer: the member is used again, but the preference
    /// stays where it is (a member that just came back is not trusted more than the one that
    /// served meanwhile). Nothing when that probe was superseded.
    pub(crate) fn reinstate(&self, i: usize, probe: u64) {
        let mut table = self.lock();
        if let Some(member) = table.members.get_mut(i).filter(|m| m.follows(probe)) {
            member.ejected_until = None;
            member.ejections = 0;
            member.probing = false;
        }
    }

    /// Member `i` failed a call or did not answer in time: it is avoided for a while, longer
    /// each time in a row. An ejected member is not ejected again (its probe decides).
    /// The preference moves to the next member that is not ejected.
    pub(crate) fn eject(&self, i: usize, now: Instant) -> Option<Ejection> {
        let mut table = self.lock();
        let n = table.members.len();
        let member = table.members.get_mut(i)?;
        let result = if member.ejected_until.is_some_and(|until| until > now) {
            None
        } else {
            let period = period_of(member.ejections);
            member.ejections = member.ejections.saturating_add(1);
            member.ejected_until = Some(now + period);
            member.suspect = true;
            let start_probe = (!member.probing).then(|| {
                member.probe += 1;
                member.probing = true;
                member.probe
            });
            Some(Ejection {
                period,
                start_probe,
            })
        };
        if table.preferred == i {
            if let Some(next) = (1..n)
                .map(|k| (i + k) % n)
                .find(|&j| !table.members[j].is_ejected(now))
            {
                table.preferred = next;
            }
        }
        result
    }

    /// Probe `probe` of member `i` failed: it stays ejected, for longer. Returns until when,
    /// `None` when that probe was superseded (and is to end).
    pub(crate) fn probe_failed(&self, i: usize, probe: u64, now: Instant) -> Option<Instant> {
        let mut table = self.lock();
        let member = table.members.get_mut(i).filter(|m| m.follows(probe))?;
        let period = period_of(member.ejections);
        member.ejections = member.ejections.saturating_add(1);
        let until = now + period;
        member.ejected_until = Some(until);
        Some(until)
    }

    /// Until when member `i` is ejected (`None` once it is back).
    #[cfg(test)]
    pub(crate) fn ejected_until(&self, i: usize) -> Option<Instant> {
        self.lock().members.get(i).and_then(|m| m.ejected_until)
    }

    /// For probe `probe` of member `i`: until when it is ejected, or `None` when it is back in
    /// use or the probe was superseded, in which case the probe ends (atomically, so that a new
    /// ejection starts a new probe).
    pub(crate) fn probe_due(&self, i: usize, probe: u64) -> Option<Instant> {
        let mut table = self.lock();
        let member = table.members.get_mut(i).filter(|m| m.follows(probe))?;
        if member.ejected_until.is_none() {
            member.probing = false;
        }
        member.ejected_until
    }

    /// Probe `probe` of member `i` stopped without an answer (the connection closed, its
    /// runtime shut down).
    pub(crate) fn probe_stopped(&self, i: usize, probe: u64) {
        if let Some(member) = self.lock().members.get_mut(i).filter(|m| m.follows(probe)) {
            member.probing = false;
        }
    }

    /// The preferred member.
    #[cfg(test)]
    pub(crate) fn preferred(&self) -> usize {
        self.lock().preferred
    }
}

fn period_of(ejections: u32) -> Duration {
    EJECT_MIN
        .saturating_mul(1u32 << ejections.min(8))
        .min(EJECT_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ejected_member_goes_last_and_the_preference_moves_on() {
        let health = Health::new(3);
        let now = Instant::now();
        assert_eq!(health.order(now), vec![0, 1, 2]);
        let ejection = health.eject(0, now).unwrap();
        assert_eq!(ejection.period, EJECT_MIN);
        let probe = ejection.start_probe.expect("a probe to start");
        assert_eq!(health.preferred(), 1);
        assert_eq!(health.order(now), vec![1, 2, 0]);
        assert!(health.is_ejected(0, now));
        // Ejecting again while ejected changes nothing and starts no second probe.
        assert_eq!(health.eject(0, now), None);
        // Once the period is over, it stays ejected until its probe answers.
        assert!(health.is_ejected(0, now + EJECT_MIN));
        // Without a probe (it stopped), it is a candidate again, after the preferred one.
        health.probe_stopped(0, probe);
        assert_eq!(health.order(now + EJECT_MIN), vec![1, 2, 0]);
        assert!(!health.is_ejected(0, now + EJECT_MIN));
        assert!(health.is_ejected(0, now));
        // Every member ejected: all are still offered, the soonest back first.
        health.eject(1, now + Duration::from_millis(10)).unwrap();
        health.eject(2, now + Duration::from_millis(5)).unwrap();
        assert_eq!(health.order(now + Duration::from_millis(20)), vec![0, 2, 1]);
    }

    #[test]
    fn probes_back_off_and_answers_reset() {
        let health = Health::new(2);
        let now = Instant::now();
        let probe = health.eject(1, now).unwrap().start_probe.unwrap();
        let until = health.probe_failed(1, probe, now);
        assert_eq!(until, Some(now + 2 * EJECT_MIN));
        let mut last = until;
        for _ in 0..10 {
            last = health.probe_failed(1, probe, now);
        }
        assert_eq!(last, Some(now + EJECT_MAX));
        health.reinstate(1, probe);
        assert_eq!(health.ejected_until(1), None);
        assert_eq!(
            health.preferred(),
            0,
            "a probe does not move the preference"
        );
        health.answered(1);
        assert_eq!(health.preferred(), 1, "an answered call does");
        assert_eq!(health.eject(1, now).unwrap().period, EJECT_MIN);
    }

    #[test]
    fn a_call_answered_supersedes_the_probe_of_a_long_ejection() {
        let health = Health::new(2);
        let now = Instant::now();
        let old = health.eject(1, now).unwrap().start_probe.unwrap();
        for _ in 0..4 {
            health.probe_failed(1, old, now);
        }
        assert_eq!(health.ejected_until(1), Some(now + EJECT_MAX));
        // It answers a call as the last resort, then fails again: ejected for the shortest
        // period, with a probe of its own, not until the old probe's long sleep ends.
        health.answered(1);
        let again = health.eject(1, now).unwrap();
        assert_eq!(again.period, EJECT_MIN);
        let new = again.start_probe.expect("a new probe");
        assert_ne!(new, old);
        // The old probe, waking, ends without touching the member.
        assert_eq!(health.probe_due(1, old), None);
        assert_eq!(health.probe_failed(1, old, now), None);
        health.reinstate(1, old);
        health.probe_stopped(1, old);
        assert!(
            health.is_ejected(1, now + EJECT_MIN),
            "its new probe follows it"
        );
        assert_eq!(health.probe_due(1, new), Some(now + EJECT_MIN));
        health.reinstate(1, new);
        assert!(!health.is_ejected(1, now));
    }

    #[test]
    fn a_stream_answer_prefers_a_member_but_does_not_reinstate_it() {
        let health = Health::new(3);
        let now = Instant::now();
        let probe = health.eject(0, now).unwrap().start_probe.unwrap();
        assert_eq!(health.preferred(), 1);
        // Keep-alives answered on member 0 (its leader answers them) while its calls fail.
        health.streamed(0);
        assert!(health.is_ejected(0, now));
        assert_eq!(health.preferred(), 1);
        assert_eq!(health.order(now)[0], 1);
        // Nor once its probe's status request is answered (etcd answers it from memory while
        // a defragmentation holds calls): only a call answered makes it preferred again.
        health.reinstate(0, probe);
        assert!(!health.is_ejected(0, now));
        health.streamed(0);
        assert_eq!(health.preferred(), 1);
        health.answered(0);
        health.streamed(1);
        health.streamed(0);
        assert_eq!(health.preferred(), 0);
        // Any member not ejected since its last call answered is preferred by a keep-alive.
        health.streamed(2);
        assert_eq!(health.order(now), vec![2, 0, 1]);
    }
}
