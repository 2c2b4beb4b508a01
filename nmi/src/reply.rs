//! An HTTP answer as the original NMI shapes it: Go `http.Error` text bodies, or IMDS-style JSON.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// What the agent answers, independent of the HTTP library (so the pure parts can be tested).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// `Retry-After` seconds (`--set-retry-after-header`).
    pub retry_after: Option<u32>,
    /// `Location` (a redirect to the clean path).
    pub location: Option<String>,
}

pub const TEXT: &str = "text/plain; charset=utf-8";
pub const JSON_CHARSET: &str = "application/json; charset=utf-8";
pub const JSON: &str = "application/json";

impl Reply {
    /// Like Go's `http.Error`: the message plus a newline, as plain text.
    pub fn text(status: u16, message: impl AsRef<str>) -> Self {
        Self {
            status,
            content_type: TEXT,
            body: format!("{}\n", message.as_ref()),
            retry_after: None,
            location: None,
        }
    }

    /// An IMDS-style OAuth error body `{"error":…,"error_description":…}` plus a newline.
    pub fn oauth_error(status: u16, error: &str, description: &str) -> Self {
        let body = serde_json::json!({"error": error, "error_description": description});
        Self {
            status,
            content_type: JSON_CHARSET,
            body: format!("{body}\n"),
            retry_after: None,
            location: None,
        }
    }

    /// `301 Moved Permanently` to `location`, with no body, as Go's router answers.
    pub fn moved(location: String) -> Self {
        Self {
            status: 301,
            content_type: "",
            body: String::new(),
            retry_after: None,
            location: Some(location),
        }
    }

    /// A successful JSON body.
    pub fn json(body: String) -> Self {
        Self {
            status: 200,
            content_type: JSON,
            body,
            retry_after: None,
            location: None,
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, self.body).into_response();
        let h = resp.headers_mut();
        if !self.content_type.is_empty() {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            );
        }
        if self.content_type == TEXT {
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
        }
        if let Some(loc) = self
            .location
            .as_deref()
            .and_then(|l| HeaderValue::from_str(l).ok())
        {
            h.insert(header::LOCATION, loc);
        }
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
