//! What one delivery pass over a message comes to, as pure functions of
//! (status, outcomes, now, configuration): which recipients are due, what
//! each recipient's outcome makes of its state (delivered, deferred with
//! its next attempt, failed, expired), which DSNs are due (failure and
//! success reports, one delay warning), and when to come back. No I/O and
//! no clock: the caller passes `now`, so retries, expiry and delay
//! warnings are tested on simulated time. The delivery manager carries the
//! plan out: status first, then DSNs, then removal.

use std::collections::HashMap;

use super::classify::{classify, Event, Success, Verdict};
use super::dsn::{self, DsnAction, DsnRecipient};
use super::retry;
use crate::config::DeliveryConfig;
use crate::proto::envelope::Recipient;
use crate::proto::reply::EnhancedCode;
use crate::queue::{DsnOwed, MessageStatus, QueueId, RcptState, StoredMessage};

/// Seconds before a DSN that could not be queued is tried again.
pub const DSN_RETRY_SECS: i64 = 60;

/// The pending recipients due at `now`, by destination domain (lowercase);
/// all those in a local domain together under "" (two of them may reach
/// one mailbox through aliases, which must then get one copy).
pub fn due_by_domain(
    msg: &StoredMessage,
    now: i64,
    is_local: impl Fn(&str) -> bool,
) -> HashMap<String, Vec<usize>> {
    let mut by_domain: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, r) in msg.envelope.recipients.iter().enumerate() {
        let Some(rs) = msg.status.rcpts.get(i) else {
            continue;
        };
        if rs.state != RcptState::Pending || rs.next_attempt > now {
            continue;
        }
        let domain = r
            .address
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        let key = if is_local(&domain) {
            String::new()
        } else {
            domain
        };
        by_domain.entry(key).or_default().push(i);
    }
    by_domain
}

/// What became of one recipient in this pass (for log lines, metrics and
/// the trace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    Delivered {
        remote: String,
        reply: String,
        how: Success,
    },
    Deferred {
        status: EnhancedCode,
        reason: String,
        retry_at: i64,
    },
    Failed {
        status: EnhancedCode,
        reason: String,
        /// It failed because it stayed queued too long.
        expired: bool,
    },
}

/// The plan for the rest of a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The new status, with the DSNs it owes marked: to be saved before any
    /// DSN goes out.
    pub status: MessageStatus,
    /// The status differs from the stored one: it must be saved (or the
    /// message removed).
    pub changed: bool,
    /// Every recipient is delivered or failed.
    pub all_done: bool,
    /// Failure and success reports due now (owed ones included).
    pub report: Vec<DsnRecipient>,
    /// The one delay warning, when due now.
    pub delay_report: Vec<DsnRecipient>,
    /// What happened to each recipient tried, by index.
    pub results: Vec<(usize, RcptResult)>,
    /// When the next pending recipient is due.
    pub next_pending: i64,
}

/// Applies the outcomes of this pass (`(recipient index, event)`) to the
/// message's status at `now`.
pub fn apply(
    msg: &StoredMessage,
    outcomes: &[(usize, Event)],
    now: i64,
    d: &DeliveryConfig,
) -> Plan {
    let id: QueueId = msg.id;
    let mut st = msg.status.clone();
    let mut report = owed_reports(msg);
    let mut results = Vec::new();
    for (i, event) in outcomes {
        let i = *i;
        let (Some(rcpt), Some(rs)) = (msg.envelope.recipients.get(i), st.rcpts.get_mut(i)) else {
            continue;
        };
        rs.attempts = rs.attempts.saturating_add(1);
        let mut verdict = classify(event);
        let mut expired = false;
        if let Verdict::Transient {
            status,
            diagnostic,
            remote,
        } = &verdict
        {
            let seed = id.0 ^ (u64::from(rs.attempts) << 48) ^ i as u64;
            let next = retry::next_attempt(
                now,
                msg.arrival,
                rs.attempts,
                d.first_retry_secs,
                d.max_retry_interval_secs,
                d.max_queue_lifetime_secs,
                seed,
            );
            if let Some(t) = next {
                rs.next_attempt = t;
                rs.last_reply = format!("{status} {diagnostic}");
                rs.status = Some(*status);
                results.push((
                    i,
                    RcptResult::Deferred {
                        status: *status,
                        reason: diagnostic.clone(),
                        retry_at: t,
                    },
                ));
                continue;
            }
            // Queued too long: this temporary failure is final.
            expired = true;
            let remote = remote.clone();
            verdict = match classify(&Event::Expired(format!("{status} {diagnostic}"))) {
                Verdict::Permanent {
                    status, diagnostic, ..
                } => Verdict::Permanent {
                    status,
                    diagnostic,
                    remote,
                },
                other => other,
            };
        }
        match verdict {
            Verdict::Delivered {
                remote,
                reply,
                notify_passed_on,
                how,
            } => {
                rs.state = RcptState::Delivered;
                rs.last_reply = reply.clone();
                rs.status = Some(EnhancedCode::generic(2));
                let action = match how {
                    Success::Relayed => DsnAction::Relayed,
                    Success::Delivered => DsnAction::Delivered,
                    Success::Expanded => DsnAction::Expanded,
                };
                // A next hop with DSN reports success itself.
                if !notify_passed_on && dsn::should_notify(rcpt.notify, action) {
                    let mta = (how == Success::Relayed || remote.starts_with("lmtp:"))
                        .then(|| remote.clone());
                    rs.dsn_owed = owed_of(action);
                    report.push(dsn_rcpt(
                        rcpt,
                        action,
                        rs.status,
                        mta,
                        Some(reply.clone()),
                        Some(now),
                    ));
                }
                results.push((i, RcptResult::Delivered { remote, reply, how }));
            }
            Verdict::Permanent {
                status,
                diagnostic,
                remote,
            } => {
                rs.state = RcptState::Failed;
                rs.last_reply = format!("{status} {diagnostic}");
                rs.status = Some(status);
                if dsn::should_notify(rcpt.notify, DsnAction::Failed) {
                    rs.dsn_owed = Some(DsnOwed::Failed);
                    report.push(dsn_rcpt(
                        rcpt,
                        DsnAction::Failed,
                        Some(status),
                        remote,
                        Some(diagnostic.clone()),
                        Some(now),
                    ));
                }
                results.push((
                    i,
                    RcptResult::Failed {
                        status,
                        reason: diagnostic,
                        expired,
                    },
                ));
            }
            // Handled above: deferred, or turned final on expiry.
            Verdict::Transient { .. } => {}
        }
    }
    let all_done = st.rcpts.iter().all(|r| r.state != RcptState::Pending);
    let mut delay_report = Vec::new();
    if !all_done
        && !st.delay_warned
        && d.delay_warning_secs > 0
        && now - msg.arrival >= d.delay_warning_secs as i64
    {
        for (i, rs) in st.rcpts.iter().enumerate() {
            let Some(r) = msg.envelope.recipients.get(i) else {
                continue;
            };
            if rs.state == RcptState::Pending && dsn::should_notify(r.notify, DsnAction::Delayed) {
                let mut dr = dsn_rcpt(
                    r,
                    DsnAction::Delayed,
                    rs.status.filter(|s| s.is_transient()),
                    None,
                    Some(rs.last_reply.clone()),
                    Some(now),
                );
                dr.will_retry_until = Some(msg.arrival + d.max_queue_lifetime_secs as i64);
                delay_report.push(dr);
            }
        }
        st.delay_warned = true;
    }
    let next_pending = st
        .rcpts
        .iter()
        .filter(|r| r.state == RcptState::Pending)
        .map(|r| r.next_attempt)
        .filter(|&t| t > now)
        .min()
        .unwrap_or(now + d.max_retry_interval_secs as i64);
    // A DSN due now is retried soon if it cannot be queued.
    st.next_attempt = if report.is_empty() {
        next_pending
    } else {
        next_pending.min(now + DSN_RETRY_SECS)
    };
    let changed = st.rcpts != msg.status.rcpts || st.delay_warned != msg.status.delay_warned;
    Plan {
        status: st,
        changed,
        all_done,
        report,
        delay_report,
        results,
        next_pending,
    }
}

impl Plan {
    /// The status must be written before the DSNs go out: whenever it
    /// changed, except for a message done with nothing owed, which is
    /// removed instead.
    pub fn save_first(&self) -> bool {
        self.changed && !(self.all_done && self.report.is_empty())
    }

    /// After the DSNs: `report_queued` and `delay_queued` say whether
    /// each was queued (an empty report counts as queued). Returns whether
    /// to remove the message or the status to keep, and whether that
    /// differs from the status saved first.
    pub fn settle(mut self, report_queued: bool, delay_queued: bool) -> Settled {
        let saved = self.status.clone();
        if report_queued {
            for rs in &mut self.status.rcpts {
                rs.dsn_owed = None;
            }
        }
        if !delay_queued {
            // The warning is tried again on the next pass.
            self.status.delay_warned = false;
        }
        let owed = self.status.rcpts.iter().any(|r| r.dsn_owed.is_some());
        if self.all_done && !owed {
            return Settled::Remove;
        }
        if !owed {
            self.status.next_attempt = self.next_pending;
        }
        let changed = self.status != saved;
        Settled::Keep {
            next: self.status.next_attempt,
            status: self.status,
            changed,
        }
    }
}

/// The end of a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Every recipient done and no DSN owed.
    Remove,
    /// Keep the message: its status (to save again if `changed`) and when
    /// to come back.
    Keep {
        status: MessageStatus,
        changed: bool,
        next: i64,
    },
}

/// The DSN reports still owed from earlier passes, rebuilt from the
/// status file (which keeps the status code and the reply, not the remote
/// host's name).
pub fn owed_reports(msg: &StoredMessage) -> Vec<DsnRecipient> {
    msg.status
        .rcpts
        .iter()
        .enumerate()
        .filter_map(|(i, rs)| {
            let action = match rs.dsn_owed? {
                DsnOwed::Failed => DsnAction::Failed,
                DsnOwed::Delivered => DsnAction::Delivered,
                DsnOwed::Relayed => DsnAction::Relayed,
                DsnOwed::Expanded => DsnAction::Expanded,
            };
            let r = msg.envelope.recipients.get(i)?;
            Some(dsn_rcpt(
                r,
                action,
                rs.status,
                None,
                Some(rs.last_reply.clone()),
                None,
            ))
        })
        .collect()
}

pub fn owed_of(action: DsnAction) -> Option<DsnOwed> {
    match action {
        DsnAction::Failed => Some(DsnOwed::Failed),
        DsnAction::Delivered => Some(DsnOwed::Delivered),
        DsnAction::Relayed => Some(DsnOwed::Relayed),
        DsnAction::Expanded => Some(DsnOwed::Expanded),
        DsnAction::Delayed => None,
    }
}

pub fn dsn_rcpt(
    r: &Recipient,
    action: DsnAction,
    status: Option<EnhancedCode>,
    remote: Option<String>,
    diagnostic: Option<String>,
    last_attempt: Option<i64>,
) -> DsnRecipient {
    DsnRecipient {
        final_recipient: r.address.clone(),
        original_recipient: r.orcpt.clone(),
        action,
        status,
        remote_mta: remote,
        diagnostic,
        last_attempt,
        will_retry_until: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{Clock, ManualClock};
    use crate::proto::envelope::{BodyType, Envelope, Notify};
    use crate::queue::{MessageStatus, RcptStatus};
    use std::net::{IpAddr, Ipv4Addr};

    const T0: i64 = 1_800_000_000;

    fn msg(rcpts: &[(&str, u8)]) -> StoredMessage {
        StoredMessage {
            id: QueueId(42),
            arrival: T0,
            envelope: Envelope {
                sender: "s@example.org".into(),
                recipients: rcpts
                    .iter()
                    .map(|(a, n)| Recipient {
                        address: a.to_string(),
                        orcpt: None,
                        notify: Notify(*n),
                    })
                    .collect(),
                ret: None,
                envid: None,
                body_type: BodyType::SevenBit,
                smtputf8: false,
                client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                helo: "c".into(),
                protocol: "ESMTP".into(),
                auth_user: None,
            },
            status: MessageStatus::all_pending(rcpts.len()),
            body: b"x\r\n".to_vec(),
            edits: Vec::new(),
            message_id: None,
        }
    }

    fn cfg() -> DeliveryConfig {
        DeliveryConfig {
            first_retry_secs: 300,
            max_retry_interval_secs: 3600,
            max_queue_lifetime_secs: 5 * 86_400,
            delay_warning_secs: 4 * 3600,
            ..DeliveryConfig::default()
        }
    }

    fn tempfail() -> Event {
        Event::Reply {
            code: 451,
            enhanced: EnhancedCode::parse("4.7.1"),
            text: "try later".into(),
            remote: "mx.example.net".into(),
        }
    }

    fn accepted(dsn: bool) -> Event {
        Event::Accepted {
            code: 250,
            text: "2.0.0 ok".into(),
            remote: "mx.example.net".into(),
            dsn,
            final_delivery: false,
        }
    }

    /// Runs passes over one message on a simulated clock, each recipient
    /// getting `event` whenever it is due, until done or `limit` passes.
    fn run(
        m: &mut StoredMessage,
        clock: &ManualClock,
        limit: usize,
        event: impl Fn(usize) -> Event,
    ) -> Vec<Plan> {
        let mut plans = Vec::new();
        for _ in 0..limit {
            let due = due_by_domain(m, clock.now(), |_| false);
            let outcomes: Vec<(usize, Event)> =
                due.values().flatten().map(|&i| (i, event(i))).collect();
            let plan = apply(m, &outcomes, clock.now(), &cfg());
            // Every DSN is queued.
            let settled = plan.clone().settle(true, true);
            plans.push(plan);
            match settled {
                Settled::Remove => break,
                Settled::Keep { status, next, .. } => {
                    m.status = status;
                    clock.advance((next - clock.now()).max(1));
                }
            }
        }
        plans
    }

    #[test]
    fn retries_back_off_warn_once_and_expire() {
        let clock = ManualClock::at(T0);
        let mut m = msg(&[("r@example.net", 0)]);
        let plans = run(&mut m, &clock, 500, |_| tempfail());
        // The first retry about first_retry_secs later (±10 %), the waits
        // doubling up to the maximum.
        let first = plans[0].status.rcpts[0].next_attempt - T0;
        assert!((270..=330).contains(&first), "{first}");
        let waits: Vec<i64> = plans
            .windows(2)
            .map(|w| w[1].status.rcpts[0].next_attempt - w[0].status.rcpts[0].next_attempt)
            .take(6)
            .collect();
        assert!(
            waits
                .windows(2)
                .all(|w| w[1] as f64 >= w[0] as f64 * 1.5 || w[1] >= 3240),
            "{waits:?}"
        );
        assert!(waits.iter().all(|&w| w <= 3960), "{waits:?}");
        // Exactly one delay warning, in the first pass at or after 4 hours.
        let warned: Vec<usize> = plans
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.delay_report.is_empty())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(warned.len(), 1);
        let at = plans[..=warned[0]].len();
        assert!(at > 1);
        // Expired in the end: failed with 4.4.7, a failure report owed.
        let last = plans.last().unwrap();
        assert!(last.all_done);
        assert_eq!(last.report.len(), 1);
        assert_eq!(last.report[0].status, EnhancedCode::parse("4.4.7"));
        assert!(matches!(
            last.results[0].1,
            RcptResult::Failed { expired: true, .. }
        ));
        assert_eq!(last.status.rcpts[0].dsn_owed, Some(DsnOwed::Failed));
        assert!(clock.now() - T0 >= 5 * 86_400);
        assert!(clock.now() - T0 < 5 * 86_400 + 3960);
    }

    #[test]
    fn mixed_outcomes_report_only_what_notify_asks_for() {
        let mut m = msg(&[
            ("ok@example.net", 0),
            ("bad@example.net", 0),
            ("tell@example.net", Notify::SUCCESS),
            ("later@example.net", 0),
        ]);
        let outcomes = vec![
            (0, accepted(false)),
            (
                1,
                Event::Reply {
                    code: 550,
                    enhanced: EnhancedCode::parse("5.1.1"),
                    text: "no such user".into(),
                    remote: "mx.example.net".into(),
                },
            ),
            (2, accepted(false)),
            (3, tempfail()),
        ];
        let plan = apply(&m, &outcomes, T0, &cfg());
        assert!(!plan.all_done);
        assert!(plan.save_first());
        let reported: Vec<(&str, DsnAction)> = plan
            .report
            .iter()
            .map(|r| (r.final_recipient.as_str(), r.action))
            .collect();
        assert_eq!(
            reported,
            [
                ("bad@example.net", DsnAction::Failed),
                ("tell@example.net", DsnAction::Relayed)
            ]
        );
        // A DSN due: the message comes back within a minute, in case the
        // DSN cannot be queued.
        assert_eq!(plan.status.next_attempt, T0 + DSN_RETRY_SECS);
        // The DSN queued: the owed marks go, the next attempt is the
        // deferred recipient's.
        let pending_at = plan.status.rcpts[3].next_attempt;
        match plan.clone().settle(true, true) {
            Settled::Keep {
                status,
                changed,
                next,
            } => {
                assert!(changed);
                assert!(status.rcpts.iter().all(|r| r.dsn_owed.is_none()));
                assert_eq!(next, pending_at);
            }
            Settled::Remove => panic!("removed with a pending recipient"),
        }
        // Not queued: kept owed, retried in a minute.
        match plan.settle(false, true) {
            Settled::Keep {
                status,
                changed,
                next,
            } => {
                assert!(!changed);
                assert_eq!(status.rcpts[1].dsn_owed, Some(DsnOwed::Failed));
                assert_eq!(next, T0 + DSN_RETRY_SECS);
            }
            Settled::Remove => panic!(),
        }
        // A next hop that speaks DSN reports success itself.
        m.envelope.recipients.truncate(1);
        m.envelope.recipients[0].notify = Notify(Notify::SUCCESS);
        m.status = MessageStatus::all_pending(1);
        let plan = apply(&m, &[(0, accepted(true))], T0, &cfg());
        assert!(plan.report.is_empty());
        assert!(plan.all_done);
        assert!(
            !plan.save_first(),
            "done and nothing owed: removed, not saved"
        );
        assert_eq!(plan.settle(true, true), Settled::Remove);
    }

    #[test]
    fn owed_reports_from_earlier_passes_come_again() {
        let mut m = msg(&[("bad@example.net", 0), ("later@example.net", 0)]);
        m.status.rcpts[0] = RcptStatus {
            state: RcptState::Failed,
            attempts: 1,
            next_attempt: 0,
            last_reply: "5.1.1 550 no".into(),
            status: EnhancedCode::parse("5.1.1"),
            dsn_owed: Some(DsnOwed::Failed),
        };
        m.status.rcpts[1].next_attempt = T0 + 1000;
        // Nothing due: only the owed report.
        assert!(due_by_domain(&m, T0, |_| false).is_empty());
        let plan = apply(&m, &[], T0, &cfg());
        assert_eq!(plan.report.len(), 1);
        assert_eq!(plan.report[0].status, EnhancedCode::parse("5.1.1"));
        assert!(!plan.changed);
        match plan.settle(true, true) {
            Settled::Keep {
                status,
                changed,
                next,
            } => {
                assert!(changed);
                assert_eq!(status.rcpts[0].dsn_owed, None);
                assert_eq!(next, T0 + 1000);
            }
            Settled::Remove => panic!(),
        }
    }

    #[test]
    fn local_recipients_go_together() {
        let m = msg(&[("a@here.test", 0), ("b@far.test", 0), ("c@HERE.test", 0)]);
        let due = due_by_domain(&m, T0, |d| d == "here.test");
        assert_eq!(due[""], [0, 2]);
        assert_eq!(due["far.test"], [1]);
    }
}
