//! Answers the server's questions about native lines (`sonde.v1.CatalogService/Serve`): the agent
//! opens the stream once per connection when it arms lines natively, names itself in the first
//! message, then answers each [`CatalogQuery`] with the files or the lines of one file
//! (`crate::native::Native::files` / `lines`), computed on a blocking thread so the runtime's
//! workers never walk DWARF.

use std::time::Duration;

use sonde_proto::sonde::{
    CatalogAnswer, CatalogQuery, CodeLine as WireLine, LineVariable as WireVariable,
    catalog_query::Query, catalog_service_client::CatalogServiceClient,
};
use tonic::{Code, transport::Channel};

use super::{Client, describe};
use crate::native::{CodeLine, Native};

/// How long a question waits for the debug-info index still being built at start.
const INDEX_WAIT: Duration = Duration::from_secs(10);
/// Questions answered at once; more wait in the stream.
const IN_FLIGHT: usize = 4;

impl Client {
    /// The task that serves catalog questions on `channel` until the stream or the connection
    /// ends; `None` when the agent arms no lines natively. A server without `CatalogService`
    /// ends it at once.
    pub(super) fn catalog_server(
        &self,
        channel: Channel,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let native = {
            let installer = self.installer.lock().unwrap_or_else(|p| p.into_inner());
            installer.native_breakpoints()
        }?;
        let (tx, rx) = tokio::sync::mpsc::channel::<CatalogAnswer>(IN_FLIGHT * 2);
        let hello = CatalogAnswer {
            agent_id: self.config.agent_id.clone(),
            resource: Some(self.resource.clone()),
            ..CatalogAnswer::default()
        };
        let _ = tx.try_send(hello);
        let request = self.request(tokio_stream::wrappers::ReceiverStream::new(rx));
        Some(async move {
            if let Err(e) = serve(channel, native, tx, request).await {
                tracing::debug!(error = %e, "sonde agent: catalog questions stream ended");
            }
        })
    }
}

async fn serve(
    channel: Channel,
    native: Native,
    tx: tokio::sync::mpsc::Sender<CatalogAnswer>,
    request: tonic::Request<tokio_stream::wrappers::ReceiverStream<CatalogAnswer>>,
) -> Result<(), String> {
    let mut queries = match CatalogServiceClient::new(channel).serve(request).await {
        Ok(resp) => resp.into_inner(),
        Err(status) if status.code() == Code::Unimplemented => {
            tracing::debug!("sonde agent: the server asks no catalog questions");
            return Ok(());
        }
        Err(status) => return Err(describe(&status)),
    };
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    loop {
        let query = match queries.message().await {
            Ok(Some(q)) => q,
            Ok(None) => return Ok(()),
            Err(status) => return Err(describe(&status)),
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return Ok(());
        };
        let native = native.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let id = query.id;
            let answer = tokio::task::spawn_blocking(move || answer(&native, query))
                .await
                .unwrap_or_else(|e| CatalogAnswer {
                    id,
                    error: format!("answering failed: {e}"),
                    ..CatalogAnswer::default()
                });
            let _ = tx.send(answer).await;
            drop(permit);
        });
    }
}

/// Answers one question.
fn answer(native: &Native, query: CatalogQuery) -> CatalogAnswer {
    let mut out = CatalogAnswer {
        id: query.id,
        ..CatalogAnswer::default()
    };
    let answered = match query.query {
        Some(Query::Files(q)) => native
            .files(q.all, INDEX_WAIT)
            .map(|files| out.files = files),
        Some(Query::Lines(q)) => native
            .lines(&q.file, (q.line != 0).then_some(q.line), INDEX_WAIT)
            .map(|lines| out.lines = lines.into_iter().map(to_wire).collect()),
        None => Err("an empty question".to_owned()),
    };
    if let Err(e) = answered {
        out.error = e;
    }
    out
}

fn to_wire(line: CodeLine) -> WireLine {
    WireLine {
        line: line.line,
        addresses: u32::try_from(line.addresses).unwrap_or(u32::MAX),
        variables: line
            .variables
            .into_iter()
            .map(|v| WireVariable {
                name: v.name,
                type_name: v.type_name.unwrap_or_default(),
                parameter: v.parameter,
                readable: v.readable,
                why: v.why.unwrap_or_default().to_owned(),
                detail: v.detail,
                readable_at: v.readable_at,
            })
            .collect(),
    }
}
