//! The gRPC service around [`AgentServer::connect`], written out instead of generated because
//! an idle pmm-agent stream must cost little memory, and tonic's generated code keeps two
//! buffers per stream for its whole life:
//!
//! - the request decoder's: ours starts at 1 KiB instead of 8 KiB (it grows for a larger
//!   message, as tonic's does);
//! - the response encoder's, which grows to the largest message sent and stays that size: a
//!   SetState with a vmagent file is several KiB, kept per stream after it was sent. The
//!   response body here encodes each message into its own exactly sized buffer instead, which
//!   is freed once written to the connection.
//!
//! Compression is not offered (neither is it in the rest of the API), so a compressed request
//! is refused as tonic would refuse it.

use super::{AgentServer, Outgoing};
use crate::grpc::pb::agent::v1::{AgentMessage, ServerMessage};
use bytes::Bytes;
use http_body::Frame;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tonic::codec::BufferSettings;
use tonic::codegen::{Body, BoxFuture, StdError, http};
use tonic::{Request, Status, Streaming};
use tonic_prost::ProstCodec;

/// Initial buffer of a stream's decoder.
const BUFFER: usize = 1024;
/// Bytes decoded before the decoder yields (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;
/// A gRPC message's prefix: the compression flag and the length.
const PREFIX: usize = 5;

/// `agent.v1.AgentService` as a tower service for tonic's router.
#[derive(Clone)]
pub struct AgentGrpc(pub AgentServer);

impl tonic::server::NamedService for AgentGrpc {
    const NAME: &'static str = "agent.v1.AgentService";
}

impl<B> tower_service::Service<http::Request<B>> for AgentGrpc
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move { Ok(connect(server, req).await.unwrap_or_else(Status::into_http)) })
    }
}

async fn connect<B>(
    server: AgentServer,
    req: http::Request<B>,
) -> Result<http::Response<tonic::body::Body>, Status>
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    if req.uri().path() != "/agent.v1.AgentService/Connect" {
        return Err(Status::unimplemented(
            "agent.v1.AgentService has only Connect",
        ));
    }
    let encoding = req
        .headers()
        .get("grpc-encoding")
        .map(|v| v.to_str().unwrap_or("?"));
    if encoding.is_some_and(|e| e != "identity") {
        return Err(Status::unimplemented(
            "Content is compressed, and this server accepts only uncompressed messages.",
        ));
    }
    let decoder = ProstCodec::<ServerMessage, AgentMessage>::raw_decoder(BufferSettings::new(
        BUFFER,
        YIELD_THRESHOLD,
    ));
    let req = Request::from_http(req.map(|body| {
        Streaming::new_request(decoder, body, None, Some(crate::grpc::MAX_REQUEST_BYTES))
    }));
    let (metadata, outbox, _) = server.connect(req).await?.into_parts();
    let mut resp = http::Response::new(tonic::body::Body::new(Outbox {
        outbox,
        done: false,
    }));
    *resp.headers_mut() = metadata.into_headers();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    Ok(resp)
}

/// The response body: each message from the stream's outbox as one length-prefixed gRPC
/// message, then the status as trailers (OK when the outbox closes without one).
struct Outbox {
    outbox: mpsc::Receiver<Outgoing>,
    done: bool,
}

fn trailers(status: &Status) -> Frame<Bytes> {
    let mut map = http::HeaderMap::new();
    // Only a status whose message cannot be a header fails here; its code still goes out.
    if status.add_header(&mut map).is_err() {
        map.insert("grpc-status", (status.code() as i32).into());
    }
    Frame::trailers(map)
}

/// `message` length-prefixed, in a buffer of exactly its size.
fn frame(message: &ServerMessage) -> Result<Bytes, Status> {
    let len = prost::Message::encoded_len(message);
    let prefix = u32::try_from(len)
        .map_err(|_| Status::resource_exhausted("a message to the agent is too large"))?;
    let mut buf = Vec::with_capacity(PREFIX + len);
    buf.push(0);
    buf.extend_from_slice(&prefix.to_be_bytes());
    prost::Message::encode_raw(message, &mut buf);
    Ok(Bytes::from(buf))
}

impl Body for Outbox {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let next = std::task::ready!(self.outbox.poll_recv(cx));
        let frame = match next {
            Some(Outgoing::Message(m)) => match frame(&m) {
                Ok(bytes) => Frame::data(bytes),
                Err(status) => {
                    self.done = true;
                    trailers(&status)
                }
            },
            Some(Outgoing::End(status)) => {
                self.done = true;
                trailers(&status)
            }
            None => {
                self.done = true;
                trailers(&Status::ok(""))
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_the_prefix_and_the_message_in_an_exact_buffer() {
        let m = ServerMessage {
            id: 7,
            payload: None,
            status: None,
        };
        let b = frame(&m).unwrap();
        let len = prost::Message::encoded_len(&m);
        assert_eq!(b.len(), PREFIX + len);
        assert_eq!(b[0], 0);
        assert_eq!(u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize, len);
        let back: ServerMessage = prost::Message::decode(&b[PREFIX..]).unwrap();
        assert_eq!(back, m);
    }
}
