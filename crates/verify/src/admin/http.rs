//! A one-request HTTP/1.1 client over a tokio `TcpStream`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::AdminError;

/// The largest response read: a config dump of a big node is a few MiB.
const MAX_RESPONSE: u64 = 64 << 20;

/// `GET path` from `addr`; the body of a 200 answer, as UTF-8 (lossily).
pub(super) async fn get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<String, AdminError> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|source| AdminError::Connect { addr, source })?;
        let io = |source| AdminError::Io {
            addr,
            path: path.to_owned(),
            source,
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE)
            .read_to_end(&mut response)
            .await
            .map_err(io)?;
        Ok::<_, AdminError>(response)
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| AdminError::Timeout {
            addr,
            path: path.to_owned(),
            timeout,
        })??;
    let malformed = |reason: String| AdminError::Malformed {
        addr,
        path: path.to_owned(),
        reason,
    };
    let (status, body) = parse_response(&response).map_err(malformed)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    if status != 200 {
        let body = body.trim().chars().take(200).collect();
        return Err(AdminError::Status {
            addr,
            path: path.to_owned(),
            status,
            body,
        });
    }
    Ok(body)
}

/// Splits a whole response into its status code and decoded body.
pub(super) fn parse_response(response: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let head_end = find(response, b"\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {} bytes", response.len()))?;
    let head = std::str::from_utf8(&response[..head_end])
        .map_err(|_| "the response head is not UTF-8".to_owned())?;
    let body = &response[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = match status_line.split(' ').collect::<Vec<_>>().as_slice() {
        [version, code, ..] if version.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .map_err(|_| format!("bad status line {status_line:?}"))?,
        _ => return Err(format!("bad status line {status_line:?}")),
    };
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    if chunked {
        return dechunk(body).map(|b| (status, b));
    }
    match length {
        Some(n) if n > body.len() => {
            Err(format!("the body ended after {} of {n} bytes", body.len()))
        }
        Some(n) => Ok((status, body[..n].to_vec())),
        None => Ok((status, body.to_vec())),
    }
}

/// Decodes a chunked body (RFC 9112 §7.1); trailers are ignored.
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n").ok_or("a chunk size line has no end")?;
        let line = std::str::from_utf8(&body[..line_end]).map_err(|_| "bad chunk size line")?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body
            .get(..size)
            .ok_or_else(|| format!("a chunk of {size} bytes is cut short"))?;
        out.extend_from_slice(chunk);
        body = body
            .get(size + 2..)
            .ok_or("a chunk is not followed by CRLF")?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_content_length_chunked_and_close_delimited_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(plain).unwrap(), (200, b"hello".to_vec()));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                        4\r\nwiki\r\n6;x=y\r\npedia \r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap().1, b"wikipedia ");
        let closed = b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\nno endpoint";
        assert_eq!(
            parse_response(closed).unwrap(),
            (404, b"no endpoint".to_vec())
        );
    }

    #[test]
    fn refuses_malformed_responses() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"[..],
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\n",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn gets_from_a_real_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                .await
                .unwrap();
            request
        });
        let body = get(addr, "/config_dump", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(body, "{}");
        let request = server.await.unwrap();
        assert!(
            request.starts_with("GET /config_dump HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("Connection: close\r\n"));
    }
}
