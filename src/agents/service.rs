//! The gRPC service around [`AgentServer::connect`], written out instead of generated so its
//! codec can use small buffers: tonic's default reserves 8 KiB for decoding and 8 KiB for
//! encoding on every stream, most of what an idle pmm-agent stream would cost. Messages larger
//! than the buffer still work (the buffer grows as needed).

use super::{AgentServer, ConnectStream};
use crate::grpc::pb::agent::v1::{AgentMessage, ServerMessage};
use std::convert::Infallible;
use std::task::{Context, Poll};
use tonic::codec::{BufferSettings, Codec};
use tonic::codegen::{Body, BoxFuture, StdError, http};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial buffer of a stream's encoder and decoder.
const BUFFER: usize = 1024;
/// Bytes encoded before the encoder yields (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `agent.v1.AgentService` as a tower service for tonic's router.
#[derive(Clone)]
pub struct AgentGrpc(pub AgentServer);

impl tonic::server::NamedService for AgentGrpc {
    const NAME: &'static str = "agent.v1.AgentService";
}

#[derive(Clone, Copy, Default)]
struct SmallCodec;

impl Codec for SmallCodec {
    type Encode = ServerMessage;
    type Decode = AgentMessage;
    type Encoder = ProstEncoder<ServerMessage>;
    type Decoder = ProstDecoder<AgentMessage>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<ServerMessage, AgentMessage>::raw_encoder(BufferSettings::new(
            BUFFER,
            YIELD_THRESHOLD,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<ServerMessage, AgentMessage>::raw_decoder(BufferSettings::new(
            BUFFER,
            YIELD_THRESHOLD,
        ))
    }
}

struct Connect(AgentServer);

impl tonic::server::StreamingService<AgentMessage> for Connect {
    type Response = ServerMessage;
    type ResponseStream = ConnectStream;
    type Future = BoxFuture<tonic::Response<ConnectStream>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<AgentMessage>>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move { server.connect(request).await })
    }
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
        Box::pin(async move {
            if req.uri().path() != "/agent.v1.AgentService/Connect" {
                return Ok(
                    tonic::Status::unimplemented("agent.v1.AgentService has only Connect")
                        .into_http(),
                );
            }
            let mut grpc = tonic::server::Grpc::new(SmallCodec)
                .apply_max_message_size_config(Some(crate::grpc::MAX_REQUEST_BYTES), None);
            Ok(grpc.streaming(Connect(server), req).await)
        })
    }
}
