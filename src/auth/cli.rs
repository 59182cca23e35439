//! `exemplar keys`: creates, lists and revokes API keys in the service's database,
//! where every replica reads them. A new key is printed once, on standard output.

use clap::{Args, Subcommand};

use super::{KeyRequest, Keyring, Scope};
use crate::config::DEFAULT_DATABASE_URL;
use crate::store::Store;

/// Options of `exemplar keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// The service's database.
    #[arg(long, global = true, env = "EXEMPLAR_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// What to do with keys.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key and print it (only its hash is stored: keep it now).
    Create {
        /// What the key may do: read, write (also examples, pool, selections) or admin
        /// (also tasks and keys).
        #[arg(long, value_enum)]
        scope: Scope,
        /// Limit the key to this task (repeat for several; default: every task).
        #[arg(long = "task")]
        tasks: Vec<String>,
        /// What the key is for, shown by `keys list`.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List every key (never the keys themselves), as JSON lines.
    List,
    /// Revoke a key by its id (`key_...`, from `keys list`).
    Revoke {
        /// The key's id.
        id: String,
    },
}

/// Runs one `exemplar keys` command.
///
/// # Errors
/// When the database fails, the request is not well-formed, or no live key has the id.
pub async fn run(args: &KeysArgs) -> anyhow::Result<()> {
    let store = Store::connect(&args.database_url).await?;
    let keyring = Keyring::open(store.clone(), false, None).await?;
    let outcome = match &args.command {
        KeysCommand::Create { scope, tasks, name } => {
            let request = KeyRequest {
                name: name.clone(),
                scope: *scope,
                tasks: (!tasks.is_empty()).then(|| tasks.clone()),
            };
            let key = keyring.create(&request).await?;
            eprintln!(
                "created {} ({} scope); it is shown only now:",
                key.info.id,
                scope.as_str()
            );
            println!("{}", key.secret);
            Ok(())
        }
        KeysCommand::List => {
            for key in keyring.list().await? {
                println!("{}", serde_json::to_string(&key)?);
            }
            Ok(())
        }
        KeysCommand::Revoke { id } => {
            if keyring.revoke(id).await? {
                eprintln!("revoked {id}");
                Ok(())
            } else {
                Err(anyhow::anyhow!("no live key has the id `{id}`"))
            }
        }
    };
    store.close().await;
    outcome
}
