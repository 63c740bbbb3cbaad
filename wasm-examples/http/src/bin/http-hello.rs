//! A wasi:http serving pod: `GET /` answers with a greeting naming the pod (`POD_NAME`,
//! set from the downward API in the manifests, else `HOSTNAME`), `/health-check` with
//! "ok" (the probe path), `/slow?ms=N` after sleeping N ms (for timeout tests),
//! `/spin` never returns (CPU-budget tests), `/fail` traps, and `/echo` returns the
//! request body. `/ready` and `/healthz` are probe paths a test can make fail: with
//! `PROBE_DIR` set (a mounted directory), `/ready` answers 503 while
//! `<PROBE_DIR>/<pod>.not-ready` exists and `/healthz` 500 while `<pod>.dead` does.
use wstd::http::body::Body;
use wstd::http::{Error, Request, Response, StatusCode};

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let pod = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let path = request.uri().path().to_string();
    match path.as_str() {
        "/" => {
            let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".into());
            Ok(Response::new(format!("{greeting} from {pod}\n").into()))
        }
        "/health-check" => Ok(Response::new("ok\n".to_owned().into())),
        "/ready" => Ok(probe_answer(&pod, "not-ready", StatusCode::SERVICE_UNAVAILABLE)?),
        "/healthz" => Ok(probe_answer(&pod, "dead", StatusCode::INTERNAL_SERVER_ERROR)?),
        "/slow" => {
            let ms: u64 = request
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            wstd::task::sleep(wstd::time::Duration::from_millis(ms)).await;
            Ok(Response::new(format!("slept {ms} ms in {pod}\n").into()))
        }
        "/spin" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "/fail" => panic!("asked to fail"),
        "/echo" => {
            let body = request.body_mut().bytes_contents().await?;
            Ok(Response::new(body.to_vec().into()))
        }
        _ => Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(format!("{path} not found in {pod}\n").into())?),
    }
}

/// 200, or `failing` while the marker file `<PROBE_DIR>/<pod>.<marker>` exists.
fn probe_answer(pod: &str, marker: &str, failing: StatusCode) -> Result<Response<Body>, Error> {
    let marked = std::env::var("PROBE_DIR")
        .map(|dir| std::path::Path::new(&dir).join(format!("{pod}.{marker}")).exists())
        .unwrap_or(false);
    let status = if marked { failing } else { StatusCode::OK };
    Ok(Response::builder()
        .status(status)
        .body(format!("{pod} {marker}={marked}\n").into())?)
}
