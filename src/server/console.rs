//! The web console: a static page (HTML, CSS, plain JavaScript) embedded in the binary and served
//! on the HTTP port at `/`, reading the same JSON API as the CLI with the same tokens and tenants.
//!
//! The assets hold no data, so they are served without a token; every piece of data the page
//! shows comes from `/api/...`, which checks the token and tenant the page sends. Nothing is
//! fetched from elsewhere (no CDN, no web fonts), and the Content-Security-Policy says so to the
//! browser. Assets carry an ETag (a hash of their bytes) with `Cache-Control: no-cache`: the
//! browser asks again on each load and gets `304 Not Modified` until the binary changes.

use std::sync::LazyLock;

use axum::{
    Router,
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

/// One embedded file.
struct Asset {
    bytes: &'static [u8],
    content_type: &'static str,
    etag: HeaderValue,
}

impl Asset {
    fn new(bytes: &'static [u8], content_type: &'static str) -> Self {
        // FNV-1a: stable across builds and platforms, enough to tell versions apart.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        Self {
            bytes,
            content_type,
            etag: HeaderValue::from_str(&format!("\"{hash:016x}\"")).expect("an ASCII ETag"),
        }
    }

    fn serve(&self, headers: &HeaderMap) -> Response {
        let fresh = headers
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| v.as_bytes() == self.etag.as_bytes());
        let mut resp = if fresh {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            self.bytes.into_response()
        };
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        h.insert(header::ETAG, self.etag.clone());
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        resp
    }
}

static INDEX: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_bytes!("console/index.html"),
        "text/html; charset=utf-8",
    )
});
static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_bytes!("console/app.js"),
        "text/javascript; charset=utf-8",
    )
});
static STYLE: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_bytes!("console/style.css"),
        "text/css; charset=utf-8",
    )
});

/// What the page may load and where it may connect: only this server.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console's routes: `/` and `/console/{file}`.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/console/{file}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    let mut resp = INDEX.serve(&headers);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match file.as_str() {
        "app.js" => SCRIPT.serve(&headers),
        "style.css" => STYLE.serve(&headers),
        _ => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("no console file {file:?}"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt as _;

    async fn get(path: &str, etag: Option<&HeaderValue>) -> Response {
        let mut req = axum::http::Request::get(path);
        if let Some(etag) = etag {
            req = req.header(header::IF_NONE_MATCH, etag);
        }
        routes::<()>()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn assets_have_their_types_and_revalidate_by_etag() {
        for (path, kind) in [
            ("/", "text/html; charset=utf-8"),
            ("/console/app.js", "text/javascript; charset=utf-8"),
            ("/console/style.css", "text/css; charset=utf-8"),
        ] {
            let resp = get(path, None).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            assert_eq!(resp.headers()[header::CONTENT_TYPE], kind, "{path}");
            assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-cache");
            let etag = resp.headers()[header::ETAG].clone();
            let again = get(path, Some(&etag)).await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        }
        let page = get("/", None).await;
        let csp = page.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        assert_eq!(
            get("/console/nothing.js", None).await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for text in [
            include_str!("console/index.html"),
            include_str!("console/app.js"),
            include_str!("console/style.css"),
        ] {
            for needle in ["http://", "https://", "//cdn", "@import", "url("] {
                let outside = text
                    .match_indices(needle)
                    .filter(|(i, _)| !text[..*i].ends_with("'http://www.w3.org/2000/svg"))
                    .filter(|(i, _)| !text[*i..].starts_with("http://www.w3.org/2000/svg"))
                    .count();
                assert_eq!(outside, 0, "{needle} in a console asset");
            }
        }
    }
}
