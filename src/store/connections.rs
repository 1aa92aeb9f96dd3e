//! How the pool opens and checks PostgreSQL connections.

use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::NoTls;

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
    type Connection = tokio_postgres::Client;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        self.0.connect().await
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        if conn.is_closed() {
            // The cheapest way to produce the closed-connection error the pool expects.
            conn.simple_query("").await.map(|_| ())
        } else {
            Ok(())
        }
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        conn.is_closed()
    }
}
