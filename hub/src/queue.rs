//! The queue's order: which queued job a free slot takes.
//!
//! 1. Tags route: a worker takes only jobs whose tag set it serves.
//! 2. Priority: the highest priority among those jobs goes first (a running job is never
//!    preempted).
//! 3. Fair share within a priority: the job of the user with the fewest jobs assigned or running
//!    now; between users with as many, the one served longest ago (round robin); between users
//!    never served, the older head job.
//! 4. FIFO within a user: by queue sequence (submission order; a lost attempt is queued again
//!    under a new sequence).
//!
//! Users at their running quota are passed over (their jobs wait, they are not refused).
//! Everything the order needs is a column of the job record (priority, owner, queue sequence)
//! plus counts of each owner's assigned and running jobs, so a database can compute the same
//! order (`ORDER BY priority DESC, running ASC, last_served ASC, queue_seq ASC`); each hub of a
//! cluster computes it over its mirror of the queue (see `cluster.rs`).
//!
//! Pure data, no locks: [`crate::dispatch::Dispatch`] owns one under its mutex.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Maps keyed by owner id, looked up for every owner on every pick: foldhash, not SipHash (the
/// keys are user ids, not attacker-chosen: a user cannot pick their own id).
pub(crate) type OwnerMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// A queued job as the queue sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Queue sequence (FIFO order within a user).
    pub seq: u64,
    /// The job.
    pub job_id: String,
    /// Higher first.
    pub priority: i32,
    /// Owner's user id.
    pub owner: String,
}

/// One user's share of the queue and of the slots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Jobs queued.
    pub queued: u32,
    /// Jobs assigned or running on this hub's workers (planned ones included).
    pub running: u32,
    /// Jobs assigned or running on other hubs' workers (a cluster; refreshed by its catch-up).
    pub elsewhere: u32,
    /// When a slot last went to this user (a tick of this queue; 0: never).
    pub last_served: u64,
}

impl Usage {
    /// Jobs assigned or running anywhere.
    pub fn active(&self) -> u32 {
        self.running + self.elsewhere
    }
}

/// The jobs of one priority in one tag set, FIFO per owner.
type Level = OwnerMap<VecDeque<(u64, String)>>;

/// Where a job stands (see [`Queue::standing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Jobs that would start before it if nothing changed.
    pub ahead: u32,
    /// Of those, jobs of a higher priority.
    pub higher: u32,
}

/// Every queued job, by tag set, priority and owner, with each owner's usage.
#[derive(Default)]
pub struct Queue {
    sets: BTreeMap<Vec<String>, BTreeMap<i32, Level>>,
    users: OwnerMap<Usage>,
    tick: u64,
    len: usize,
}

/// The head chosen by [`Queue::pick`].
pub struct Pick {
    /// Its tag set.
    pub tags: Vec<String>,
    /// Its priority.
    pub priority: i32,
    /// Its owner.
    pub owner: String,
}

impl Entry {
    /// The entry of `job`, queued under `seq`.
    pub fn of(seq: u64, job: &crate::store::JobRecord) -> Entry {
        Entry {
            seq,
            job_id: job.id.clone(),
            priority: job.priority,
            owner: job.owner.clone(),
        }
    }
}

impl Queue {
    /// Number of queued jobs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A user's usage (zero for one never seen).
    pub fn usage(&self, owner: &str) -> Usage {
        self.users.get(owner).copied().unwrap_or_default()
    }

    /// Adds a job under `tags` (sorted). False when it is already there (a cluster hub hears
    /// of its queue twice: a note, a catch-up).
    pub fn insert(&mut self, tags: &[String], e: Entry) -> bool {
        let fifo = self
            .sets
            .entry(tags.to_vec())
            .or_default()
            .entry(e.priority)
            .or_default()
            .entry(e.owner.clone())
            .or_default();
        // Recovery and requeues may insert out of order: keep each FIFO sorted.
        let pos = fifo.partition_point(|(s, _)| *s < e.seq);
        if fifo
            .get(pos)
            .is_some_and(|(s, id)| *s == e.seq && *id == e.job_id)
        {
            return false;
        }
        fifo.insert(pos, (e.seq, e.job_id));
        self.users.entry(e.owner).or_default().queued += 1;
        self.len += 1;
        true
    }

    /// Removes the job queued under `seq` in `tags` (cancel). Returns whether it was there.
    pub fn remove(&mut self, tags: &[String], seq: u64) -> bool {
        let Some(levels) = self.sets.get_mut(tags) else {
            return false;
        };
        let mut found = None;
        'levels: for (prio, level) in levels.iter_mut() {
            for (owner, fifo) in level.iter_mut() {
                if let Some(i) = fifo.iter().position(|(s, _)| *s == seq) {
                    fifo.remove(i);
                    found = Some((*prio, owner.clone()));
                    break 'levels;
                }
            }
        }
        let Some((prio, owner)) = found else {
            return false;
        };
        self.forget_if_empty(tags, prio, &owner);
        self.len -= 1;
        if let Some(u) = self.users.get_mut(&owner) {
            u.queued = u.queued.saturating_sub(1);
        }
        true
    }

    /// The head a worker serving the tag sets `serves` accepts should take next, passing over
    /// owners `blocked` says are at their running quota.
    pub fn pick(
        &self,
        serves: impl Fn(&[String]) -> bool,
        blocked: impl Fn(&str, &Usage) -> bool,
    ) -> Option<Pick> {
        type Rank = (i32, Reverse<u32>, Reverse<u64>, Reverse<u64>);
        let mut best: Option<(Rank, &Vec<String>, &String)> = None;
        for (tags, levels) in &self.sets {
            if !serves(tags) {
                continue;
            }
            for (prio, level) in levels.iter().rev() {
                if best.as_ref().is_some_and(|(rank, _, _)| rank.0 > *prio) {
                    break;
                }
                let mut any = false;
                for (owner, fifo) in level {
                    let Some((head, _)) = fifo.front() else {
                        continue;
                    };
                    let u = self.usage(owner);
                    if blocked(owner, &u) {
                        continue;
                    }
                    any = true;
                    let rank = (
                        *prio,
                        Reverse(u.active()),
                        Reverse(u.last_served),
                        Reverse(*head),
                    );
                    if best.as_ref().is_none_or(|(b, _, _)| rank > *b) {
                        best = Some((rank, tags, owner));
                    }
                }
                if any {
                    break;
                }
            }
        }
        best.map(|((priority, ..), tags, owner)| Pick {
            tags: tags.clone(),
            priority,
            owner: owner.clone(),
        })
    }

    /// Takes the head `pick` chose: the owner now has one more job running and was served last.
    pub fn take(&mut self, pick: &Pick) -> Option<(u64, String)> {
        let item = self
            .sets
            .get_mut(&pick.tags)?
            .get_mut(&pick.priority)?
            .get_mut(&pick.owner)?
            .pop_front()?;
        self.forget_if_empty(&pick.tags, pick.priority, &pick.owner);
        self.len -= 1;
        self.tick += 1;
        let u = self.users.entry(pick.owner.clone()).or_default();
        u.queued = u.queued.saturating_sub(1);
        u.running += 1;
        u.last_served = self.tick;
        Some(item)
    }

    /// Undoes the turn [`Queue::take`] gave `owner` for a job handed back untouched (a legacy
    /// poller stepping over a job it cannot run): they were last served at `before` again.
    pub fn unserve(&mut self, owner: &str, before: u64) {
        if let Some(u) = self.users.get_mut(owner) {
            u.last_served = before;
        }
    }

    /// One more job of `owner` runs here (recovery, a resumed agent).
    pub fn started(&mut self, owner: &str) {
        self.users.entry(owner.to_string()).or_default().running += 1;
    }

    /// A job of `owner` no longer runs here (finished, requeued, claim failed).
    pub fn stopped(&mut self, owner: &str) {
        if let Some(u) = self.users.get_mut(owner) {
            u.running = u.running.saturating_sub(1);
        }
    }

    /// Replaces every user's count of jobs running on other hubs.
    pub fn set_elsewhere(&mut self, counts: &HashMap<String, u32>) {
        for (owner, u) in &mut self.users {
            u.elsewhere = counts.get(owner).copied().unwrap_or(0);
        }
        for (owner, n) in counts {
            self.users.entry(owner.clone()).or_default().elsewhere = *n;
        }
    }

    /// Where the job queued under `seq` (`tags`, `priority`, `owner`) stands among the jobs in
    /// tag sets `able` accepts: the higher-priority ones, the owner's older ones, and as many of
    /// each other user's as would get a turn before it (round robin as in [`Queue::pick`]). An
    /// estimate for people: arrivals and quota waits change it. The job need not be in the queue
    /// (a cluster's mirror may lag): counts go by `seq`.
    pub fn standing(
        &self,
        seq: u64,
        priority: i32,
        owner: &str,
        able: impl Fn(&[String]) -> bool,
    ) -> Standing {
        let mut higher = 0usize;
        let mut own_older = 0usize;
        // Other owners' jobs of this priority, and their oldest.
        let mut others: HashMap<&str, (usize, u64)> = HashMap::new();
        for (tags, levels) in &self.sets {
            if !able(tags) {
                continue;
            }
            for (prio, level) in levels {
                if *prio > priority {
                    higher += level.values().map(VecDeque::len).sum::<usize>();
                    continue;
                }
                if *prio < priority {
                    continue;
                }
                for (o, fifo) in level {
                    if o == owner {
                        own_older += fifo.partition_point(|(s, _)| *s < seq);
                    } else if let Some((head, _)) = fifo.front() {
                        let e = others.entry(o.as_str()).or_insert((0, u64::MAX));
                        e.0 += fifo.len();
                        e.1 = e.1.min(*head);
                    }
                }
            }
        }
        let me = self.usage(owner);
        let my_rank = (me.active(), me.last_served, seq);
        let turns: usize = others
            .iter()
            .map(|(o, (n, head))| {
                let u = self.usage(o);
                let first = (u.active(), u.last_served, *head) < my_rank;
                (*n).min(own_older + usize::from(first))
            })
            .sum();
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX - 1);
        Standing {
            ahead: clamp(higher + own_older + turns),
            higher: clamp(higher),
        }
    }

    /// Queued jobs per priority band: below 0, 0, above 0.
    pub fn depth_by_band(&self) -> [(&'static str, usize); 3] {
        let mut bands = [("low", 0), ("normal", 0), ("high", 0)];
        for levels in self.sets.values() {
            for (prio, level) in levels {
                let i = match prio.signum() {
                    -1 => 0,
                    0 => 1,
                    _ => 2,
                };
                bands[i].1 += level.values().map(VecDeque::len).sum::<usize>();
            }
        }
        bands
    }

    /// Queued jobs per tag set (sorted tags joined by `,`; `""` for untagged jobs), the `max`
    /// deepest, with the rest summed under `None`.
    pub fn depth_by_tags(&self, max: usize) -> (Vec<(String, usize)>, Option<usize>) {
        let mut all: Vec<(String, usize)> = self
            .sets
            .iter()
            .map(|(tags, levels)| {
                let n = levels
                    .values()
                    .flat_map(|l| l.values())
                    .map(VecDeque::len)
                    .sum();
                (tags.join(","), n)
            })
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let rest = (all.len() > max).then(|| all.split_off(max).iter().map(|(_, n)| n).sum());
        (all, rest)
    }

    /// The tag sets with queued jobs (for the position of a job no worker can run yet).
    pub fn tag_sets(&self) -> impl Iterator<Item = &Vec<String>> {
        self.sets.keys()
    }

    /// The oldest queued job in a tag set `serves` accepts whose owner is not `blocked`, of
    /// the best priority and user by [`Queue::pick`]'s rules, taken.
    pub fn take_next(
        &mut self,
        serves: impl Fn(&[String]) -> bool,
        blocked: impl Fn(&str, &Usage) -> bool,
    ) -> Option<Entry> {
        let pick = self.pick(serves, blocked)?;
        let (seq, job_id) = self.take(&pick)?;
        Some(Entry {
            seq,
            job_id,
            priority: pick.priority,
            owner: pick.owner,
        })
    }

    fn forget_if_empty(&mut self, tags: &[String], prio: i32, owner: &str) {
        let Some(levels) = self.sets.get_mut(tags) else {
            return;
        };
        if let Some(level) = levels.get_mut(&prio) {
            if level.get(owner).is_some_and(VecDeque::is_empty) {
                level.remove(owner);
            }
            if level.is_empty() {
                levels.remove(&prio);
            }
        }
        if levels.is_empty() {
            self.sets.remove(tags);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `owner`'s job `{owner}{seq}`.
    pub(crate) fn entry(seq: u64, owner: &str, priority: i32) -> Entry {
        Entry {
            seq,
            job_id: format!("{owner}{seq}"),
            priority,
            owner: owner.into(),
        }
    }

    fn any(_: &[String]) -> bool {
        true
    }

    fn free(_: &str, _: &Usage) -> bool {
        false
    }

    /// Runs `n` jobs one at a time on one slot (each finishes before the next starts).
    fn run_one_slot(q: &mut Queue, n: usize) -> Vec<String> {
        let mut order = Vec::new();
        for _ in 0..n {
            let Some(Entry {
                job_id: id, owner, ..
            }) = q.take_next(any, free)
            else {
                break;
            };
            q.stopped(&owner);
            order.push(id);
        }
        order
    }

    #[test]
    fn a_burst_does_not_starve_another_user_and_priority_goes_first() {
        let mut q = Queue::default();
        // One slot busy with a's job.
        q.insert(&[], entry(0, "a", 0));
        let busy = q.take_next(any, free).expect("first").job_id;
        assert_eq!(busy, "a0");
        for seq in 1..=30 {
            q.insert(&[], entry(seq, "a", 0));
        }
        for seq in 31..=33 {
            q.insert(&[], entry(seq, "b", 0));
        }
        q.insert(&[], entry(34, "c", 10));
        let before = q.standing(31, 0, "b", any);
        assert_eq!(before.higher, 1);
        assert!(before.ahead <= 2, "{before:?}");
        q.stopped("a");
        let order = run_one_slot(&mut q, 34);
        assert_eq!(order[0], "c34", "the priority job starts next");
        let b_at: Vec<usize> = order
            .iter()
            .enumerate()
            .filter(|(_, id)| id.starts_with('b'))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(b_at.len(), 3);
        assert!(b_at.iter().all(|i| (1..=8).contains(i)), "{order:?}");
        let a: Vec<&String> = order.iter().filter(|id| id.starts_with('a')).collect();
        let sorted = {
            let mut s = a.clone();
            s.sort_by_key(|id| id[1..].parse::<u32>().expect("seq"));
            s
        };
        assert_eq!(a, sorted, "a's jobs keep FIFO");
        assert_eq!(a.len(), 30);
        assert!(q.is_empty());
    }

    #[test]
    fn fewer_running_jobs_go_first_and_quota_blocked_users_are_passed_over() {
        let mut q = Queue::default();
        for seq in 1..=4 {
            q.insert(&[], entry(seq, "a", 0));
        }
        q.insert(&[], entry(5, "b", 0));
        // a already runs two jobs (two slots), b none: b's job is next though younger.
        q.started("a");
        q.started("a");
        let id = q.take_next(any, free).expect("pick").job_id;
        assert_eq!(id, "b5");
        // a at its quota of 2: nothing for a; the queue still has a's jobs.
        let at_two = |_: &str, u: &Usage| u.active() >= 2;
        assert!(q.take_next(any, at_two).is_none());
        q.stopped("a");
        let id = q.take_next(any, at_two).expect("pick").job_id;
        assert_eq!(id, "a1");
        // Jobs on other hubs count too.
        q.set_elsewhere(&HashMap::from([("a".to_string(), 5)]));
        assert!(q.take_next(any, at_two).is_none());
        q.set_elsewhere(&HashMap::new());
        assert_eq!(q.usage("a").elsewhere, 0);
    }

    #[test]
    fn depth_by_tag_set_keeps_the_deepest_and_sums_the_rest() {
        let mut q = Queue::default();
        let set = |t: &str| vec![t.to_string()];
        for (seq, tags) in [
            (1, set("a")),
            (2, set("a")),
            (3, set("b")),
            (4, vec![]),
            (5, set("c")),
        ] {
            q.insert(&tags, entry(seq, "u", 0));
        }
        assert_eq!(
            q.depth_by_tags(10),
            (
                vec![
                    ("a".to_string(), 2),
                    (String::new(), 1),
                    ("b".to_string(), 1),
                    ("c".to_string(), 1)
                ],
                None
            )
        );
        let (top, rest) = q.depth_by_tags(2);
        assert_eq!(top, vec![("a".to_string(), 2), (String::new(), 1)]);
        assert_eq!(rest, Some(2));
    }

    #[test]
    fn tags_route_and_removal_and_bands() {
        let mut q = Queue::default();
        let gpu = vec!["gpu".to_string()];
        q.insert(&gpu, entry(1, "a", 5));
        q.insert(&[], entry(2, "a", 0));
        q.insert(&[], entry(3, "b", -3));
        assert!(!q.insert(&[], entry(3, "b", -3)), "duplicates are ignored");
        assert_eq!(q.len(), 3);
        assert_eq!(q.depth_by_band(), [("low", 1), ("normal", 1), ("high", 1)]);
        // A plain worker never gets the gpu job, whatever its priority.
        let plain = |t: &[String]| t.is_empty();
        let id = q.take_next(plain, free).expect("pick").job_id;
        assert_eq!(id, "a2");
        assert!(q.remove(&[], 3));
        assert!(!q.remove(&[], 3));
        assert!(q.take_next(plain, free).is_none());
        let id = q.take_next(any, free).expect("pick").job_id;
        assert_eq!(id, "a1");
        assert!(q.is_empty());
        assert_eq!(q.usage("b").queued, 0);
    }
}
