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
