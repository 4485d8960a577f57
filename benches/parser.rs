//! Micro-benchmarks of the protocol core: command parsing and the DATA
//! decoder, in bytes per second. `cargo bench` prints one line per case.

use std::hint::black_box;
use std::time::{Duration, Instant};

use pigeon::proto::command::parse_command;
use pigeon::proto::data::BodyDecoder;

/// Runs `f` repeatedly for about `dur` and returns (iterations, elapsed).
fn run(dur: Duration, mut f: impl FnMut()) -> (u64, Duration) {
    for _ in 0..100 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    (n, start.elapsed())
}

fn report(name: &str, bytes_per_iter: usize, (n, t): (u64, Duration)) {
    let secs = t.as_secs_f64();
    let mbps = (n as f64 * bytes_per_iter as f64) / secs / 1e6;
    let ns = secs * 1e9 / n as f64;
    println!("BENCH {name:<28} {ns:>10.1} ns/iter {mbps:>10.1} MB/s");
}

fn main() {
    let dur = Duration::from_millis(
        std::env::args()
            .find_map(|a| a.strip_prefix("--ms=").and_then(|v| v.parse().ok()))
            .unwrap_or(1000),
    );
    let cmds: [&[u8]; 5] = [
        b"MAIL FROM:<sender.name@example.org> SIZE=12345 BODY=8BITMIME",
        b"RCPT TO:<recipient+tag@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;recipient+2Btag@example.com",
        b"EHLO client.example.net",
        b"DATA",
        b"RSET",
    ];
    let total: usize = cmds.iter().map(|c| c.len() + 2).sum();
    report(
        "parse_command (5 commands)",
        total,
        run(dur, || {
            for c in cmds {
                let _ = black_box(parse_command(black_box(c)));
            }
        }),
    );

    let mut text = Vec::new();
    while text.len() < 1 << 20 {
        text.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor\r\n",
        );
        text.extend_from_slice(b"..a stuffed line\r\n\r\n");
    }
    text.extend_from_slice(b".\r\n");
    let mut out = Vec::with_capacity(text.len());
    report(
        "data decoder, 1 MiB text",
        text.len(),
        run(dur, || {
            out.clear();
            let mut d = BodyDecoder::data();
            let _ = black_box(d.feed(black_box(&text), Some(&mut out)));
        }),
    );

    let small: Vec<u8> = text[..1024]
        .iter()
        .copied()
        .chain(b"\r\n.\r\n".iter().copied())
        .collect();
    report(
        "data decoder, 1 KiB message",
        small.len(),
        run(dur, || {
            out.clear();
            let mut d = BodyDecoder::data();
            let _ = black_box(d.feed(black_box(&small), Some(&mut out)));
        }),
    );

    let long_lines: Vec<u8> = std::iter::repeat_n(b'x', 1 << 20)
        .chain(b"\r\n.\r\n".iter().copied())
        .collect();
    report(
        "data decoder, 1 MiB one line",
        long_lines.len(),
        run(dur, || {
            out.clear();
            let mut d = BodyDecoder::data();
            let _ = black_box(d.feed(black_box(&long_lines), Some(&mut out)));
        }),
    );
}
