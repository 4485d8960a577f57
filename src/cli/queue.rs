//! `pigeon queue ...`: lists and shows messages straight from the spool
//! (safe while the daemon runs), and sends flush, hold, release, delete
//! and bounce requests to the running daemon over its control socket.

use std::path::Path;
use std::process::ExitCode;

use crate::queue::{self, QueueId};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn age(arrival: i64) -> String {
    let s = (now() - arrival).max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub struct ListFilter {
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub domain: Option<String>,
    pub state: Option<String>,
}

impl ListFilter {
    fn keep(&self, m: &queue::Summary) -> bool {
        let has = |hay: &str, needle: &str| hay.to_lowercase().contains(&needle.to_lowercase());
        if let Some(s) = &self.sender {
            if !has(&m.sender, s) {
                return false;
            }
        }
        if let Some(r) = &self.recipient {
            if !m.recipients.iter().any(|x| has(&x.address, r)) {
                return false;
            }
        }
        if let Some(d) = &self.domain {
            let d = d.trim_start_matches('@').to_lowercase();
            let in_domain = |a: &str| {
                a.rsplit_once('@')
                    .is_some_and(|(_, rd)| rd.to_lowercase() == d)
            };
            if !m.recipients.iter().any(|x| in_domain(&x.address)) {
                return false;
            }
        }
        if let Some(st) = &self.state {
            let st = st.to_lowercase();
            let ok = match st.as_str() {
                "held" | "hold" => m.hold,
                _ => m
                    .recipients
                    .iter()
                    .any(|x| state_name(x.status.state) == st),
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

fn state_name(s: queue::RcptState) -> &'static str {
    match s {
        queue::RcptState::Pending => "pending",
        queue::RcptState::Delivered => "delivered",
        queue::RcptState::Failed => "failed",
    }
}

pub fn queue_request(dir: &Path, verb: &str, ids: &[String]) -> ExitCode {
    for id in ids {
        if id.parse::<QueueId>().is_err() {
            eprintln!("not a queue id: {id}");
            return ExitCode::FAILURE;
        }
    }
    let line = std::iter::once(verb.to_string())
        .chain(ids.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    match crate::delivery::control::request(dir, &line) {
        Ok(answer) => {
            print!("{answer}");
            if answer.starts_with("error:") {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

pub fn queue_list(dir: &Path, json: bool, filter: &ListFilter) -> ExitCode {
    let list = match queue::list(dir) {
        Ok(l) => l.into_iter().filter(|m| filter.keep(m)).collect::<Vec<_>>(),
        Err(e) => {
            eprintln!("cannot read the queue in {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&list) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    for m in &list {
        let sender = if m.sender.is_empty() { "<>" } else { &m.sender };
        let rcpts: Vec<String> = m
            .recipients
            .iter()
            .map(|r| {
                format!(
                    "{} ({})",
                    r.address,
                    serde_json::to_value(r.status.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                )
            })
            .collect();
        let held = if m.hold { "  [held]" } else { "" };
        println!(
            "{}  {:>4}  {:>8}  {}  {}{held}",
            m.id,
            age(m.arrival),
            m.size,
            sender,
            rcpts.join(", ")
        );
    }
    if list.is_empty() {
        println!("queue is empty");
    }
    ExitCode::SUCCESS
}

pub fn queue_show(dir: &Path, id: &str, json: bool, body: bool) -> ExitCode {
    let Ok(qid) = id.parse::<QueueId>() else {
        eprintln!("not a queue id: {id}");
        return ExitCode::FAILURE;
    };
    let msg = match queue::read_message(dir, qid) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{id}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let content = msg.content();
    if body {
        use std::io::Write;
        let _ = std::io::stdout().write_all(&content);
        return ExitCode::SUCCESS;
    }
    let header_end = content
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(content.len());
    let headers = String::from_utf8_lossy(&content[..header_end]).replace("\r\n", "\n");
    let env = &msg.envelope;
    if json {
        let rcpts: Vec<serde_json::Value> = env
            .recipients
            .iter()
            .zip(msg.status.rcpts.iter())
            .map(|(r, st)| {
                serde_json::json!({
                    "address": r.address, "orcpt": r.orcpt, "notify": r.notify.0,
                    "state": st.state, "attempts": st.attempts, "next_attempt": st.next_attempt, "last_reply": st.last_reply,
                })
            })
            .collect();
        let v = serde_json::json!({
            "id": msg.id.to_string(), "arrival": msg.arrival, "size": content.len(),
            "message_id": msg.message_id,
            "sender": env.sender, "ret": env.ret.map(|r| format!("{r:?}").to_uppercase()), "envid": env.envid,
            "body_type": format!("{:?}", env.body_type), "smtputf8": env.smtputf8,
            "client_ip": env.client_ip.to_string(), "helo": env.helo, "protocol": env.protocol,
            "recipients": rcpts, "headers": headers,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    println!("id:         {}", msg.id);
    println!("arrival:    {} ({} ago)", msg.arrival, age(msg.arrival));
    println!("size:       {}", content.len());
    if let Some(mid) = &msg.message_id {
        println!("message-id: {mid}");
    }
    println!("sender:     <{}>", env.sender);
    println!(
        "client:     {} (helo {}), {}",
        env.client_ip, env.helo, env.protocol
    );
    println!(
        "body:       {:?}{}",
        env.body_type,
        if env.smtputf8 { ", SMTPUTF8" } else { "" }
    );
    if let Some(r) = env.ret {
        println!("ret:        {r:?}");
    }
    if let Some(e) = &env.envid {
        println!("envid:      {e}");
    }
    for (r, st) in env.recipients.iter().zip(msg.status.rcpts.iter()) {
        println!(
            "recipient:  <{}> {:?} attempts={} next={}{}{}",
            r.address,
            st.state,
            st.attempts,
            st.next_attempt,
            r.orcpt
                .as_ref()
                .map(|o| format!(" orcpt={o}"))
                .unwrap_or_default(),
            if st.last_reply.is_empty() {
                String::new()
            } else {
                format!(" last=\"{}\"", st.last_reply)
            }
        );
    }
    println!("\n{headers}");
    ExitCode::SUCCESS
}
