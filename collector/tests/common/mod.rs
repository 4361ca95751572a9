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
