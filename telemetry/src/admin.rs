//! The admin HTTP surface of podid's services: `/healthz`, `/readyz` and `/metrics`, each added
//! only when the binary serves it, and the plain listener that serves them until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::Error;

use crate::exposition::PROMETHEUS_CONTENT_TYPE;

/// Builds an admin router route by route; a route not added is not served (404).
#[derive(Default)]
pub struct AdminRoutes {
    router: Router,
}

impl AdminRoutes {
    pub fn new() -> Self {
        Self::default()
    }

    /// `/healthz`: always 200 (as the original components), the body `Active` while `active`
    /// holds, else `Not Active`.
    pub fn health(self, active: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        let active = Arc::new(active);
        self.route(
            "/healthz",
            get(move || {
                let active = active.clone();
                async move { if active() { "Active" } else { "Not Active" } }
            }),
        )
    }

    /// `/readyz`: 200 `ok` while `not_ready` returns `None`, else 503 with the reason it
    /// returns as the body (what is missing and, where known, the fix).
    pub fn readiness(self, not_ready: impl Fn() -> Option<String> + Send + Sync + 'static) -> Self {
        let not_ready = Arc::new(not_ready);
        self.route(
            "/readyz",
            get(move || {
                let not_ready = not_ready.clone();
                async move {
                    match not_ready() {
                        None => (StatusCode::OK, "ok".to_owned()),
                        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
                    }
                }
            }),
        )
    }

    /// `/metrics`: what `render` returns (see [`crate::exposition::render`]), as
    /// [`PROMETHEUS_CONTENT_TYPE`].
    pub fn metrics(self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        let render = Arc::new(render);
        self.route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move { ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], render()) }
            }),
        )
    }

    fn route(self, path: &str, method: axum::routing::MethodRouter) -> Self {
        Self {
            router: self.router.route(path, method),
        }
    }

    pub fn into_router(self) -> Router {
        self.router
    }
}

/// Serves `router` on `port` of every IPv4 address until `shutdown` fires, then finishes the
/// requests in flight.
pub async fn serve(port: u16, router: Router, shutdown: CancellationToken) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
        .await
        .map_err(|source| Error::Bind { port, source })?;
    serve_on(listener, router, shutdown).await
}

/// [`serve`] on a listener already bound.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(Error::Serve)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get(router: &Router, path: &str) -> (StatusCode, Option<String>, String) {
        let resp = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_is_always_200_and_says_whether_active() {
        let active = Arc::new(AtomicBool::new(false));
        let a = active.clone();
        let router = AdminRoutes::new()
            .health(move || a.load(Ordering::SeqCst))
            .into_router();
        let (status, _, body) = get(&router, "/healthz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "Not Active"));
        active.store(true, Ordering::SeqCst);
        let (status, _, body) = get(&router, "/healthz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "Active"));
    }

    #[tokio::test]
    async fn readiness_is_503_until_ready() {
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        let router = AdminRoutes::new()
            .readiness(move || (!r.load(Ordering::SeqCst)).then(|| "caches not synced".to_owned()))
            .into_router();
        let (status, _, body) = get(&router, "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
        );
        ready.store(true, Ordering::SeqCst);
        let (status, _, body) = get(&router, "/readyz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let router = AdminRoutes::new()
            .metrics(|| "m 1\n".to_owned())
            .into_router();
        let (status, ct, body) = get(&router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct.as_deref(), Some(PROMETHEUS_CONTENT_TYPE));
        assert_eq!(body, "m 1\n");
    }

    #[tokio::test]
    async fn only_the_routes_added_are_served() {
        let router = AdminRoutes::new().health(|| true).into_router();
        for path in ["/readyz", "/metrics", "/"] {
            assert_eq!(get(&router, path).await.0, StatusCode::NOT_FOUND, "{path}");
        }
        let router = AdminRoutes::new().metrics(String::new).into_router();
        assert_eq!(get(&router, "/healthz").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn serves_until_shutdown() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_on(
            listener,
            AdminRoutes::new().health(|| true).into_router(),
            shutdown.clone(),
        ));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with("Active"), "{out}");
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_port_in_use_is_a_bind_error() {
        let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = serve(port, Router::new(), CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Bind { port: p, .. } if p == port),
            "{err}"
        );
        assert_eq!(err.to_string(), format!("binding port {port}"));
    }
}
