//! `NativeTransaction`: an owned database transaction for the caller's
//! business writes and enqueues.

use napi::Result;
use napi_derive::napi;
use relaybox::Transaction;

use crate::bridge::run;
use crate::convert;

/// An open transaction. Rolled back when dropped uncommitted.
#[napi]
pub struct NativeTransaction(pub(crate) Transaction);

#[napi]
impl NativeTransaction {
    /// Runs a statement with tagged parameters (JSON); returns the number of
    /// rows affected.
    #[napi(catch_unwind)]
    pub async fn execute(&self, sql: String, params_json: String) -> Result<i64> {
        let tx = self.0.clone();
        run(async move {
            let params = convert::params(&params_json)?;
            let affected = tx.execute(&sql, &params).await?;
            Ok(i64::try_from(affected).unwrap_or(i64::MAX))
        })
        .await
    }

    /// Runs a query with tagged parameters (JSON); returns the rows as JSON
    /// text (objects of tagged values).
    #[napi(catch_unwind)]
    pub async fn query(&self, sql: String, params_json: String) -> Result<String> {
        let tx = self.0.clone();
        run(async move {
            let params = convert::params(&params_json)?;
            tx.query(&sql, &params).await.map(convert::rows)
        })
        .await
    }

    /// Writes one message (a `MessageSpec` as JSON) into the outbox; returns its id.
    #[napi(catch_unwind)]
    pub async fn enqueue(&self, spec_json: String) -> Result<String> {
        let tx = self.0.clone();
        run(async move {
            let message = convert::message(&spec_json)?;
            tx.enqueue(message).await.map(|id| id.to_string())
        })
        .await
    }

    /// Writes many messages (a JSON array of specs) in one statement; returns
    /// their ids. All or none.
    #[napi(catch_unwind)]
    pub async fn enqueue_batch(&self, specs_json: String) -> Result<Vec<String>> {
        let tx = self.0.clone();
        run(async move {
            let messages = convert::messages(&specs_json)?;
            let ids = tx.enqueue_batch(&messages).await?;
            Ok(ids.into_iter().map(|id| id.to_string()).collect())
        })
        .await
    }

    /// Commits; enqueued messages become visible to relays.
    #[napi(catch_unwind)]
    pub async fn commit(&self) -> Result<()> {
        let tx = self.0.clone();
        run(async move { tx.commit().await }).await
    }

    /// Rolls back: nothing written in this transaction remains.
    #[napi(catch_unwind)]
    pub async fn rollback(&self) -> Result<()> {
        let tx = self.0.clone();
        run(async move { tx.rollback().await }).await
    }

    /// Whether it was committed or rolled back.
    #[napi(catch_unwind)]
    pub async fn is_finished(&self) -> Result<bool> {
        let tx = self.0.clone();
        run(async move { Ok(tx.is_finished().await) }).await
    }
}
