//! A minimal HTTP/1.1 `GET` for scraping the other services' `/metrics` (plain `http://` only,
//! one connection per scrape, `Connection: close`), so that query-api needs no HTTP client crate.
//! It understands `Content-Length`, chunked and read-to-close bodies.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest `/metrics` body read; a bigger one is refused rather than held in memory.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// The body of `GET url` when it answers 200 within `timeout`; otherwise why not.
pub async fn get(url: &str, timeout: Duration) -> Result<String, String> {
    match tokio::time::timeout(timeout, fetch(url)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

async fn fetch(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "only http:// sources are supported".to_string())?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err("no host in the address".into());
    }
    let target = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut stream = TcpStream::connect(&target)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/plain\r\n\
         User-Agent: query-api-status\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX_BODY {
            return Err(format!("answer larger than {MAX_BODY} bytes"));
        }
    }
    parse_response(&raw)
}

/// A whole HTTP/1.1 response → its body, when the status is 200.
fn parse_response(raw: &[u8]) -> Result<String, String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| "truncated answer (no end of headers)".to_string())?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!("answered {status_line}"));
    }
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(length) = length {
        body.get(..length)
            .ok_or_else(|| "truncated answer (shorter than its Content-Length)".to_string())?
            .to_vec()
    } else {
        body.to_vec()
    };
    String::from_utf8(body).map_err(|_| "the answer is not UTF-8".to_string())
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| "truncated chunked answer".to_string())?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body
            .get(..size)
            .ok_or_else(|| "truncated chunk".to_string())?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_by_length_chunked_and_to_close() {
        let by_length = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(by_length).unwrap(), "hello");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), "hello world");
        let to_close = b"HTTP/1.0 200 OK\r\n\r\na b";
        assert_eq!(parse_response(to_close).unwrap(), "a b");
        let refused = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            parse_response(refused).unwrap_err(),
            "answered HTTP/1.1 404 Not Found"
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[tokio::test]
    async fn a_real_server_is_scraped_and_a_closed_port_is_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/metrics", axum::routing::get(|| async { "up 1\n" }));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let body = get(&format!("http://{addr}/metrics"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(body, "up 1\n");
        let missing = get(&format!("http://{addr}/nope"), Duration::from_secs(5)).await;
        assert!(missing.unwrap_err().contains("404"));
        server.abort();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        assert!(get(
            &format!("http://{closed_addr}/metrics"),
            Duration::from_secs(5)
        )
        .await
        .is_err());
        assert!(
            get("https://example.invalid/metrics", Duration::from_secs(1))
                .await
                .unwrap_err()
                .contains("http://")
        );
    }
}
