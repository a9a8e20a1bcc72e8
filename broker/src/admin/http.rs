//! Just enough HTTP/1.1 for the admin endpoint: one `GET` or `HEAD` per connection,
//! no body, answered with `Connection: close`. Bounded: a request head is at most
//! [`HEAD_BYTES_MAX`] and must arrive within the socket's read timeout.

use std::io::{self, Read, Write};
use std::net::TcpStream;

/// Largest request head accepted (request line and headers).
pub const HEAD_BYTES_MAX: usize = 8 * 1024;

/// A parsed request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// `key=value` pairs of the query, in order (not percent-decoded: the API's
    /// parameters are numbers).
    pub query: Vec<(String, String)>,
}

impl Request {
    /// The first value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON answer.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }

    /// A plain-text answer.
    pub fn text(status: u16, text: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: text.into().into_bytes(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Why a request could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The socket failed or timed out, or closed before a whole head.
    Io(io::Error),
    /// Not an HTTP/1.x request line.
    Malformed,
    /// The head is longer than [`HEAD_BYTES_MAX`].
    TooLarge,
}

/// Reads a request head from `stream`.
pub fn read_request(stream: &mut TcpStream) -> Result<Request, ReadError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end);
            break;
        }
        if head.len() > HEAD_BYTES_MAX {
            return Err(ReadError::TooLarge);
        }
        let n = stream.read(&mut chunk).map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        head.extend_from_slice(&chunk[..n]);
    }
    parse_request_line(&head).ok_or(ReadError::Malformed)
}

/// Parses the first line of a request head.
pub fn parse_request_line(head: &[u8]) -> Option<Request> {
    let line = head.split(|b| *b == b'\r' || *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?.to_owned();
    let target = parts.next()?;
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") || parts.next().is_some() || !target.starts_with('/') {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    Some(Request {
        method,
        path: path.to_owned(),
        query,
    })
}

/// Writes `response` (headers only for `HEAD`) and flushes.
pub fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    head_only: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(&response.body)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn request_line_with_query_parses() {
        let request =
            parse_request_line(b"GET /api/v1/clients?offset=10&limit=5 HTTP/1.1\r\nHost: x")
                .unwrap();
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/api/v1/clients");
        assert_eq!(request.param("offset"), Some("10"));
        assert_eq!(request.param("limit"), Some("5"));
        assert_eq!(request.param("other"), None);
    }

    #[test]
    fn malformed_request_lines_are_refused() {
        assert!(parse_request_line(b"GET /").is_none());
        assert!(parse_request_line(b"GET metrics HTTP/1.1").is_none());
        assert!(parse_request_line(b"GET / SPDY/3").is_none());
        assert!(parse_request_line(b"\xff\xfe").is_none());
    }
}
