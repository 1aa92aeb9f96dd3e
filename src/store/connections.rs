//! How the pool opens and checks PostgreSQL connections, and the statements each one keeps
//! prepared.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Statement};

/// A pooled connection: the client, plus the statements of the per-job queries, parsed and
/// planned once per connection instead of on every job.
pub struct Connection {
    client: Client,
    prepared: HashMap<&'static str, Statement>,
    /// A transaction begun by [`Connection::begin`] has not been seen to end: given back like
    /// this, the connection is closed rather than lent again with the transaction open.
    in_transaction: AtomicBool,
}

impl Deref for Connection {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

// Transactions need the client mutably.
impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Connection {
    /// `sql` prepared on this connection, the first use paying for it.
    pub async fn prepared(
        &mut self,
        sql: &'static str,
        types: &[Type],
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare_typed(sql, types).await?;
        self.prepared.insert(sql, statement.clone());
        Ok(statement)
    }

    /// The client, for functions that take any `GenericClient`.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Begins a transaction without waiting for the server: statements sent after the returned
    /// future is first polled, before it is awaited, travel in the same round trip and run
    /// inside the transaction (`transaction()` waits for BEGIN's answer first). tokio-postgres
    /// sends a statement when its future is first polled, so futures polled in order (as
    /// `futures::join!` does) go out in that order. The transaction ends with
    /// [`Begun::commit`] or [`Begun::rollback`].
    pub fn begin(
        &self,
    ) -> (
        Begun<'_>,
        impl std::future::Future<Output = Result<(), tokio_postgres::Error>> + '_,
    ) {
        self.in_transaction.store(true, Ordering::Relaxed);
        (Begun { conn: self }, self.client.batch_execute("BEGIN"))
    }
}

/// A transaction begun by [`Connection::begin`]. Dropped without [`Begun::commit`] or
/// [`Begun::rollback`] (a cancelled task, an unexpected error: statements may still be running
/// on the server), it stays marked open, and the pool closes its connection, which ends it.
pub struct Begun<'c> {
    conn: &'c Connection,
}

impl Begun<'_> {
    /// Commits. In a transaction where a statement failed, the server rolls back instead and
    /// answers without an error: callers check their statements' results too.
    pub async fn commit(&self) -> Result<(), tokio_postgres::Error> {
        self.conn.client.batch_execute("COMMIT").await?;
        self.conn.in_transaction.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Rolls back without waiting for the answer, as tokio-postgres's own `Transaction` does
    /// when dropped: the ROLLBACK is queued on the connection, so whatever is sent next runs
    /// after it, outside the transaction, and the connection can be lent again at once. For
    /// when every statement sent in the transaction has been answered: one still running would
    /// hold up the next borrower. Should the ROLLBACK not go out (the connection is closing),
    /// the pool closes the connection.
    pub fn rollback(self) {
        use futures::FutureExt;
        // Pending: queued, its answer to be dropped when it comes.
        if let Some(Err(_)) = self.conn.client.batch_execute("ROLLBACK").now_or_never() {
            return;
        }
        self.conn.in_transaction.store(false, Ordering::Relaxed);
    }
}

impl Deref for Begun<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// bb8-postgres' manager, except that a checkout only checks that the connection is still
/// open instead of sending a query: a round trip before every query would double the cost of
/// the job path, and a connection the server closed (a restart) is seen as closed locally.
#[derive(Debug)]
pub struct Manager(PostgresConnectionManager<NoTls>);

impl Manager {
    pub fn new(config: tokio_postgres::Config) -> Self {
        Self(PostgresConnectionManager::new(config, NoTls))
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Connection;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        Ok(Connection {
            client: self.0.connect().await?,
            prepared: HashMap::new(),
            in_transaction: AtomicBool::new(false),
        })
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        if conn.is_closed() {
            // bb8-postgres' own check, which fails at once on a closed connection.
            self.0.is_valid(&mut conn.client).await
        } else {
            Ok(())
        }
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        conn.is_closed() || *conn.in_transaction.get_mut()
    }
}
