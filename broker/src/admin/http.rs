//! What the admin routes see of HTTP: a [`Request`] (method, path, query) and a
//! [`Response`] (status, content type, body). hyper parses and writes the wire format
//! ([`super`] runs it); these two keep the routes free of it.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::StatusCode;

/// A request, as the routes see it.
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
    /// A request for `path` with `query` (what follows `?`), as hyper parsed them.
    pub fn new(method: &str, path: &str, query: Option<&str>) -> Request {
        let query = query
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        Request {
            method: method.to_owned(),
            path: path.to_owned(),
            query,
        }
    }

    /// A request for `target`, `/path` or `/path?query`.
    #[cfg(test)]
    pub fn from_target(method: &str, target: &str) -> Request {
        match target.split_once('?') {
            Some((path, query)) => Request::new(method, path, Some(query)),
            None => Request::new(method, target, None),
        }
    }

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

    /// As hyper sends it: the same head the endpoint always sent (`Content-Type`,
    /// `Content-Length`, `Cache-Control: no-store`, `Connection: close`). For `HEAD`
    /// hyper keeps the head and drops the body.
    pub fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let length = self.body.len();
        let mut response = hyper::Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        // invariant: content types are this module's constants, visible ASCII (a bad one
        // would panic in every test that asks for it).
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_with_query_parses() {
        let request = Request::from_target("GET", "/api/v1/clients?offset=10&limit=5&flag");
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/api/v1/clients");
        assert_eq!(request.param("offset"), Some("10"));
        assert_eq!(request.param("limit"), Some("5"));
        assert_eq!(request.param("flag"), Some(""));
        assert_eq!(request.param("other"), None);
    }

    #[test]
    fn response_head_is_the_endpoints_usual() {
        let response = Response::json(404, &serde_json::json!({"error": "x"})).into_hyper();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
        assert_eq!(header(CONTENT_TYPE), Some("application/json"));
        assert_eq!(header(CONTENT_LENGTH), Some("13"));
        assert_eq!(header(CACHE_CONTROL), Some("no-store"));
        assert_eq!(header(CONNECTION), Some("close"));
    }
}
