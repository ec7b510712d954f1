//! `Transaction`: an owned database transaction for the caller's business
//! writes and enqueues, or the consumer's transaction handed to a handler.
//! Every call has a `suspend` form and a `...Blocking` form.

use std::sync::Arc;

use relaybox::Error;

use crate::bridge::{blocking, run};
use crate::convert::{MessageSpec, Row, SqlValue};
use crate::error::RelayboxError;
use crate::relay::count;

/// An open transaction. Dropped (closed) before commit: rolled back.
#[derive(uniffi::Object)]
pub struct Transaction {
    tx: relaybox::Transaction,
    /// The consumer's transaction: the consumer commits it, not the handler.
    managed: bool,
}

impl Transaction {
    /// A transaction the caller owns.
    pub fn owned(tx: relaybox::Transaction) -> Arc<Self> {
        Arc::new(Transaction { tx, managed: false })
    }

    /// The consumer's transaction, lent to a handler.
    pub fn managed(tx: relaybox::Transaction) -> Arc<Self> {
        Arc::new(Transaction { tx, managed: true })
    }

    fn check_owned(&self) -> relaybox::Result<()> {
        if self.managed {
            return Err(Error::InvalidConfig {
                field: "transaction".into(),
                reason: "a handler's transaction is committed by the consumer; \
                         throw to roll the message back"
                    .into(),
            });
        }
        Ok(())
    }
}

fn messages(specs: Vec<MessageSpec>) -> relaybox::Result<Vec<relaybox::Message>> {
    specs.into_iter().map(MessageSpec::into_message).collect()
}

fn ids(ids: Vec<uuid::Uuid>) -> Vec<String> {
    ids.into_iter().map(|id| id.to_string()).collect()
}

#[uniffi::export]
impl Transaction {
    /// Runs a statement (`$1`.. placeholders on PostgreSQL, `?` on SQLite);
    /// returns the number of rows affected.
    pub async fn execute(&self, sql: String, params: Vec<SqlValue>) -> Result<i64, RelayboxError> {
        let tx = self.tx.clone();
        run(async move {
            tx.execute(&sql, &crate::convert::params(params)?)
                .await
                .map(count)
        })
        .await
    }

    /// `execute`, blocking the calling thread.
    pub fn execute_blocking(
        &self,
        sql: String,
        params: Vec<SqlValue>,
    ) -> Result<i64, RelayboxError> {
        blocking(async {
            self.tx
                .execute(&sql, &crate::convert::params(params)?)
                .await
                .map(count)
        })
    }

    /// Runs a query; returns every row.
    pub async fn query(
        &self,
        sql: String,
        params: Vec<SqlValue>,
    ) -> Result<Vec<Row>, RelayboxError> {
        let tx = self.tx.clone();
        run(async move { rows(tx.query(&sql, &crate::convert::params(params)?).await) }).await
    }

    /// `query`, blocking the calling thread.
    pub fn query_blocking(
        &self,
        sql: String,
        params: Vec<SqlValue>,
    ) -> Result<Vec<Row>, RelayboxError> {
        blocking(async { rows(self.tx.query(&sql, &crate::convert::params(params)?).await) })
    }

    /// Writes one message into the outbox in this transaction; returns its id.
    /// An invalid message writes nothing and the transaction stays usable.
    pub async fn enqueue(&self, spec: MessageSpec) -> Result<String, RelayboxError> {
        let tx = self.tx.clone();
        run(async move { Ok(tx.enqueue(spec.into_message()?).await?.to_string()) }).await
    }

    /// `enqueue`, blocking the calling thread.
    pub fn enqueue_blocking(&self, spec: MessageSpec) -> Result<String, RelayboxError> {
        blocking(async { Ok(self.tx.enqueue(spec.into_message()?).await?.to_string()) })
    }

    /// Writes several messages in one statement; returns their ids. All or none.
    pub async fn enqueue_batch(
        &self,
        specs: Vec<MessageSpec>,
    ) -> Result<Vec<String>, RelayboxError> {
        let tx = self.tx.clone();
        run(async move { tx.enqueue_batch(&messages(specs)?).await.map(ids) }).await
    }

    /// `enqueueBatch`, blocking the calling thread.
    pub fn enqueue_batch_blocking(
        &self,
        specs: Vec<MessageSpec>,
    ) -> Result<Vec<String>, RelayboxError> {
        blocking(async { self.tx.enqueue_batch(&messages(specs)?).await.map(ids) })
    }

    /// Commits: the enqueued messages become visible to relays.
    pub async fn commit(&self) -> Result<(), RelayboxError> {
        self.check_owned()?;
        let tx = self.tx.clone();
        run(async move { tx.commit().await }).await
    }

    /// `commit`, blocking the calling thread.
    pub fn commit_blocking(&self) -> Result<(), RelayboxError> {
        self.check_owned()?;
        blocking(self.tx.commit())
    }

    /// Rolls back: nothing written in this transaction remains.
    pub async fn rollback(&self) -> Result<(), RelayboxError> {
        self.check_owned()?;
        let tx = self.tx.clone();
        run(async move { tx.rollback().await }).await
    }

    /// `rollback`, blocking the calling thread.
    pub fn rollback_blocking(&self) -> Result<(), RelayboxError> {
        self.check_owned()?;
        blocking(self.tx.rollback())
    }
}

fn rows(result: relaybox::Result<Vec<relaybox::Row>>) -> relaybox::Result<Vec<Row>> {
    result.map(|rows| rows.into_iter().map(Row::from).collect())
}
