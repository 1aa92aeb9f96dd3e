//! Token housekeeping, run by every API process: announces tokens that expire within seven days
//! and purges expired ones (events on NATS, emails when SMTP is configured), and records
//! `last_used_at` for the tokens used since the last sweep in one UPDATE. Claims are atomic in
//! PostgreSQL, so with several replicas each notice still goes out once.

mod mail;

use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

pub use mail::Mailer;

use crate::auth::Authenticator;
use crate::queue::events::{TokenEvent, TokenEventKind};
use crate::queue::Bus;
use crate::store::tokens::ExpiringToken;
use crate::store::{self, Pool};

/// How long before its expiration a token is announced.
const NOTICE_DAYS: i64 = 7;

pub struct Sweeper {
    pub pool: Pool,
    pub bus: Bus,
    pub auth: Arc<Authenticator>,
    pub mailer: Option<Mailer>,
    pub interval: std::time::Duration,
}

impl Sweeper {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "token sweep failed");
            }
        }
        // Keep the last uses of a stopping replica.
        let _ = self.flush_last_used().await;
    }

    async fn flush_last_used(&self) -> anyhow::Result<()> {
        let used = self.auth.take_used();
        if !used.is_empty() {
            store::tokens::touch(&self.pool, &used).await?;
        }
        Ok(())
    }

    async fn sweep(&self) -> anyhow::Result<()> {
        self.flush_last_used().await?;
        let horizon = Utc::now() + chrono::Duration::days(NOTICE_DAYS);
        for token in store::tokens::claim_expiring(&self.pool, horizon).await? {
            self.announce(&token, TokenEventKind::Expiring).await;
        }
        for token in store::tokens::purge_expired(&self.pool).await? {
            self.announce(&token, TokenEventKind::Expired).await;
        }
        Ok(())
    }

    async fn announce(&self, token: &ExpiringToken, kind: TokenEventKind) {
        let workspaces = match &token.workspace_id {
            Some(ws) => vec![ws.clone()],
            None => store::users::workspaces_of(&self.pool, &token.email)
                .await
                .unwrap_or_default(),
        };
        for workspace in workspaces {
            let event = TokenEvent {
                workspace,
                kind,
                token_prefix: token.prefix.clone(),
                label: token.label.clone(),
                owner: token.email.clone(),
                expiration: token.expiration,
                at: Utc::now(),
            };
            if let Err(e) = self.bus.publish_token_event(&event).await {
                tracing::warn!(prefix = %token.prefix, error = %e, "token event not published");
            }
        }
        if let Some(mailer) = &self.mailer {
            let label = token.label.as_deref().unwrap_or("unlabelled");
            let (subject, body) = match kind {
                TokenEventKind::Expiring => (
                    format!("Your Millrace token {}… expires soon", token.prefix),
                    format!(
                        "Your token {}… ({label}) expires at {}.\nCreate a new one before then to keep your webhooks working.\n",
                        token.prefix, token.expiration
                    ),
                ),
                TokenEventKind::Expired => (
                    format!("Your Millrace token {}… has expired", token.prefix),
                    format!(
                        "Your token {}… ({label}) expired at {} and was removed.\n",
                        token.prefix, token.expiration
                    ),
                ),
            };
            if let Err(e) = mailer.send(&token.email, &subject, body).await {
                tracing::warn!(prefix = %token.prefix, error = %e, "token email not sent");
            }
        }
    }
}
