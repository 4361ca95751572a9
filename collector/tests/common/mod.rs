//! What the binary's tests share: one HTTP/1.1 exchange over a plain socket (these tests run
//! the `wayfinder` binary from synchronous code, without an async client).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends `request_line` (`GET /path`) with `headers` (each ending in CRLF) and `body` on a
/// connection of its own, waiting up to `read_timeout` for the answer; the whole response as
/// text.
pub(crate) fn http_exchange(
    addr: SocketAddr,
    request_line: &str,
    headers: &str,
    body: &str,
    read_timeout: Duration,
) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connects");
    stream.set_read_timeout(Some(read_timeout)).unwrap();
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    write!(
        stream,
        "{request_line} HTTP/1.1\r\nHost: {addr}\r\n{headers}{length}Connection: close\r\n\r\n{body}"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The four `listening LISTENER ADDRESS` lines `wayfinder serve` writes first on its standard
/// output (which `child` pipes), as a map from listener to address.
#[allow(
    dead_code,
    reason = "not every test file that shares this module starts the binary"
)]
pub(crate) fn listening(
    child: &mut std::process::Child,
) -> std::collections::HashMap<String, SocketAddr> {
    use std::io::BufRead as _;
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut addrs = std::collections::HashMap::new();
    for _ in 0..4 {
        let line = lines.next().expect("a listening line").expect("text");
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words.first(), Some(&"listening"), "{line}");
        addrs.insert(words[1].to_owned(), words[2].parse().expect("an address"));
    }
    addrs
}

/// A child process killed when dropped, so that no test leaves one behind.
#[allow(
    dead_code,
    reason = "not every test file that shares this module starts a process"
)]
pub(crate) struct Killed(pub(crate) std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// moto's S3 server on a free loopback port, once it answers, with the bucket `bucket` made;
/// `None` when moto is missing.
#[allow(dead_code, reason = "only the tests of the bucket history start moto")]
pub(crate) fn moto(bucket: &str) -> Option<(Killed, SocketAddr)> {
    use std::process::{Command, Stdio};
    use std::time::Instant;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let child = Killed(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            let made = http_exchange(
                addr,
                &format!("PUT /{bucket}"),
                "",
                "",
                Duration::from_secs(20),
            );
            assert!(made.starts_with("HTTP/1.1 200"), "the bucket: {made}");
            return Some((child, addr));
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
    None
}
