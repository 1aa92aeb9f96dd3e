//! How the pool opens and checks PostgreSQL connections, and the statements each one keeps
//! prepared.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};

use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Statement};

/// A pooled connection: the client, plus the statements of the per-job queries, parsed and
/// planned once per connection instead of on every job.
pub struct Connection {
    client: Client,
    prepared: HashMap<&'static str, Statement>,
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
        conn.is_closed()
    }
}
