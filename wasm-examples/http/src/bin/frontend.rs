//! A wasi:http frontend that calls a backend Service by its cluster name: `GET /` makes
//! `GET http://$BACKEND/` (default `backend`, resolved by the node through the pod's
//! DNS search path, no DNS packet) and answers "frontend <pod> got: <backend's body>".
//! A failed call answers 502 with the error, so a test sees why.
use wstd::http::body::Body;
use wstd::http::{Client, Error, Request, Response, StatusCode};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let pod = std::env::var("POD_NAME").unwrap_or_else(|_| "frontend".into());
    if request.uri().path() == "/health-check" {
        return Ok(Response::new("ok\n".to_owned().into()));
    }
    let backend = std::env::var("BACKEND").unwrap_or_else(|_| "backend".into());
    let upstream = Request::get(format!("http://{backend}/"))
        .body(Body::empty())
        .map_err(Error::from)?;
    match Client::new().send(upstream).await {
        Ok(mut response) => {
            let status = response.status();
            let body = response.body_mut().str_contents().await?.to_string();
            Ok(Response::new(
                format!("frontend {pod} got {}: {body}", status.as_u16()).into(),
            ))
        }
        Err(e) => Ok(Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(format!("frontend {pod}: calling {backend} failed: {e:?}\n").into())?),
    }
}
