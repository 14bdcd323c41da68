//! The console: a web UI served by the aggregator at `/`, its files embedded in the
//! binary gzip-compressed (see `build.rs`). Pages are client-side routes (`/explore`,
//! `/incidents/42`, …): each serves `index.html`, which reads its state from the URL.
//! The files are public (they hold no data); every call they make goes to the API with
//! the user's token, under the API's roles.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    pub name: &'static str,
    pub mime: &'static str,
    pub etag: &'static str,
    /// The file, gzip-compressed.
    pub gz: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// The console's pages: each is `index.html` (the script routes by path).
pub const PAGES: [&str; 8] = [
    "/",
    "/explore",
    "/patterns",
    "/anomalies",
    "/incidents",
    "/alerts",
    "/fleet",
    "/storage",
];

fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// Bytes of every file, compressed (what a first load downloads at most).
pub fn compressed_size() -> usize {
    ASSETS.iter().map(|a| a.gz.len()).sum()
}

fn serve(a: &'static Asset, headers: &HeaderMap, cache: &'static str) -> Response {
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == a.etag))
    {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, a.etag), (header::CACHE_CONTROL, cache)],
        )
            .into_response();
    }
    let gzip_ok = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q_zero = parts.any(|p| p.trim().replace(' ', "") == "q=0");
            (name == "gzip" || name == "*") && !q_zero
        });
    let mut r = if gzip_ok {
        let mut r = a.gz.into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        use std::io::Read;
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(a.gz)
            .read_to_end(&mut out)
            .is_err()
        {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        out.into_response()
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.mime));
    h.insert(header::ETAG, HeaderValue::from_static(a.etag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn page(headers: HeaderMap) -> Response {
    match find("index.html") {
        Some(a) => {
            let mut r = serve(a, &headers, "no-cache");
            // The console runs only its own scripts and talks only to this server.
            r.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'",
                ),
            );
            r
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match find(&name).filter(|a| a.name != "index.html") {
        // Revalidated each time (ETag): a new aggregator's console is seen at once.
        Some(a) => serve(a, &headers, "no-cache"),
        None => super::api::errors::json_error(
            StatusCode::NOT_FOUND,
            &format!("no console file `{name}`"),
        ),
    }
}

/// The console's routes (public: the files hold no data).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut r = Router::new().route("/console/{name}", get(asset));
    for p in PAGES {
        r = r.route(p, get(page));
        if p != "/" {
            r = r.route(&format!("{p}/{{*rest}}"), get(page));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_embedded_compressed_and_typed() {
        for name in ["index.html", "app.js", "style.css"] {
            let a = find(name).unwrap_or_else(|| panic!("{name} is embedded"));
            assert_eq!(&a.gz[..2], &[0x1f, 0x8b], "{name} is gzip");
            assert!(a.etag.starts_with('"') && a.etag.ends_with('"'));
        }
        assert!(find("app.js").unwrap().mime.starts_with("text/javascript"));
        assert!(compressed_size() > 0);
    }
}
