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

    /// Begins a transaction without waiting for the server: statements sent after it, before
    /// awaiting it, travel in the same round trip and run inside it (`transaction()` waits for
    /// BEGIN's answer first). Until [`Connection::commit`] or [`Connection::rollback`] sees it
    /// end, the pool will not lend the connection again: a transaction abandoned halfway (an
    /// error, a cancelled task) is closed with its connection, its locks released.
    pub fn begin(
        &self,
    ) -> impl std::future::Future<Output = Result<(), tokio_postgres::Error>> + '_ {
        self.in_transaction.store(true, Ordering::Relaxed);
        self.client.batch_execute("BEGIN")
    }

    /// Commits the transaction begun by [`Connection::begin`]. In a transaction where a
    /// statement failed, it rolls back instead, without an error: callers check their
    /// statements' results too.
    pub async fn commit(&self) -> Result<(), tokio_postgres::Error> {
        self.end("COMMIT").await
    }

    /// Rolls back the transaction begun by [`Connection::begin`].
    pub async fn rollback(&self) -> Result<(), tokio_postgres::Error> {
        self.end("ROLLBACK").await
    }

    async fn end(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute(sql).await?;
        self.in_transaction.store(false, Ordering::Relaxed);
        Ok(())
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
