//! `anya ln …`: the Lightning node of a running `anya-node` (`[ln]`), through its API
//! (`/v1/ln/…`).
//!
//! Wiring only: the node does the work; this command sends the request and prints the
//! answer. The token comes from `--token` / `ANYA_NODE_TOKEN`, or from the node's cookie file
//! (`<data dir>/.cookie`, the same default data directory as the node's), and is never
//! printed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::CliError;

pub(crate) const LN_ABOUT: &str = "\
The Lightning node of a running anya-node ([ln] enabled in its configuration): its channels, \
invoices, offers and payments, through the node's API (/v1/ln/…).

The node is --node (default http://127.0.0.1:8470, ANYA_NODE_URL). The token is --token or \
ANYA_NODE_TOKEN (a `sign` token to connect, open, close and pay; `read` for the rest), or the \
admin token in the node's cookie file: --cookie, ANYA_NODE_COOKIE, or <--data-dir>/.cookie when \
this command runs where the node keeps its data. For a node serving HTTPS with its own \
certificate, --cacert names the certificate to trust (the node's tls/cert.pem).

Every payment passes the node's spending policy first; a refusal names the rules it broke and \
sends nothing. Outcomes arrive as events (/v1/events): `anya ln payments` shows where they \
stand.

Examples:
  anya ln info
  anya ln address                                  # fund the node's on-chain wallet here
  anya ln open 02abc…@203.0.113.5:9735 --amount 1000000
  anya ln channels
  anya ln invoice --amount-msat 5000000 --description coffee
  anya ln pay lnbcrt50u1p…
  anya ln pay 02abc… --amount-msat 1000             # keysend
  anya ln pay lno1qgs… --amount-msat 20000          # a BOLT12 offer
  anya ln close 1234567890123456789 [--force]";

/// Where the node is and how to log in.
#[derive(Debug, Args)]
#[command(next_help_heading = "anya-node connection")]
pub(crate) struct NodeArgs {
    /// The node's API.
    #[arg(
        long = "node",
        value_name = "URL",
        env = "ANYA_NODE_URL",
        default_value = "http://127.0.0.1:8470"
    )]
    url: String,
    /// An API token; prefer ANYA_NODE_TOKEN, which other users cannot see in the process list.
    #[arg(long, value_name = "TOKEN", env = "ANYA_NODE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The node's cookie file [default: <--data-dir>/.cookie].
    #[arg(long, value_name = "FILE", env = "ANYA_NODE_COOKIE")]
    cookie: Option<PathBuf>,
    /// A PEM certificate to trust for an HTTPS node (its self-signed tls/cert.pem).
    #[arg(long, value_name = "FILE", env = "ANYA_NODE_CACERT")]
    cacert: Option<PathBuf>,
    /// Print the node's JSON answer as it is.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum LnCommand {
    /// The node id, addresses, best block and balances.
    Info {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// A new address of the node's on-chain wallet, to fund channels.
    Address {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Connect to a peer.
    Connect {
        /// `<node id>@<host>:<port>`.
        peer: String,
        /// Do not reconnect to it after a restart.
        #[arg(long)]
        no_persist: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Open a channel funded from the node's on-chain wallet; prints its user channel id.
    Open {
        /// `<node id>@<host>:<port>`.
        peer: String,
        /// The channel's capacity, in satoshis.
        #[arg(long, value_name = "SAT")]
        amount: u64,
        /// Give the peer this much when the channel opens, in millisatoshis (a payment, which
        /// the spending policy approves first).
        #[arg(long, value_name = "MSAT")]
        push_msat: Option<u64>,
        /// Announce the channel to the network (the node needs ln.listen and ln.alias).
        #[arg(long)]
        announce: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Close a channel (cooperatively, or with --force without the peer).
    Close {
        /// The user channel id (`anya ln channels`, first column).
        id: String,
        /// Close without the peer: the node's funds come back after a delay.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Make a BOLT11 invoice to be paid to the node; prints it.
    Invoice {
        /// The amount, in millisatoshis (none: the payer chooses).
        #[arg(long, value_name = "MSAT")]
        amount_msat: Option<u64>,
        /// The description.
        #[arg(long, default_value = "")]
        description: String,
        /// Seconds until it expires.
        #[arg(long, value_name = "SECS", default_value_t = 3600)]
        expiry: u32,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Make a BOLT12 offer to be paid to the node (any number of times); prints it.
    Offer {
        /// The amount per payment, in millisatoshis (none: the payer chooses).
        #[arg(long, value_name = "MSAT")]
        amount_msat: Option<u64>,
        /// The description.
        #[arg(long, default_value = "")]
        description: String,
        /// Seconds until it expires (none: never).
        #[arg(long, value_name = "SECS")]
        expiry: Option<u32>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Pay a BOLT11 invoice, a BOLT12 offer (`lno1…`), or a node id by keysend; prints the
    /// payment id.
    Pay {
        /// An invoice, an offer, or a node id (66 hex characters: keysend).
        target: String,
        /// The amount, in millisatoshis: for keysend, an invoice or offer without one, or more
        /// than it asks.
        #[arg(long, value_name = "MSAT")]
        amount_msat: Option<u64>,
        /// The most routing fee to pay, in millisatoshis [default: 1% plus 50 sat].
        #[arg(long, value_name = "MSAT")]
        max_fee_msat: Option<u64>,
        /// For an offer: how many items.
        #[arg(long)]
        quantity: Option<u64>,
        /// For an offer: a note to its issuer.
        #[arg(long)]
        payer_note: Option<String>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// List the channels: user channel id, peer, capacity, what can be sent and received,
    /// state.
    Channels {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// List the payments (the latest first), or show one.
    Payments {
        /// A payment id (hex): show that one.
        id: Option<String>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Show what an invoice or offer asks, field by field.
    Decode {
        /// The invoice or offer.
        request: String,
        #[command(flatten)]
        node: NodeArgs,
    },
}

/// A connection to the node's API.
struct Api {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Api {
    fn new(args: &NodeArgs, data_dir: &Path) -> Result<Self, CliError> {
        let token = match (&args.token, &args.cookie) {
            (Some(token), _) => token.trim().to_owned(),
            (None, cookie) => {
                let path = cookie.clone().unwrap_or_else(|| data_dir.join(".cookie"));
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    CliError::Usage(format!(
                        "no token: pass --token (or set ANYA_NODE_TOKEN), or --cookie with the node's cookie file \
                         ({} could not be read: {e})",
                        path.display()
                    ))
                })?;
                text.trim().to_owned()
            }
        };
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(120)))
            .http_status_as_error(false);
        if let Some(file) = &args.cacert {
            let pem =
                std::fs::read(file).map_err(|e| CliError::Message(format!("cannot read {}: {e}", file.display())))?;
            let cert = ureq::tls::Certificate::from_pem(&pem)
                .map_err(|e| CliError::Message(format!("{}: not a PEM certificate: {e}", file.display())))?;
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])))
                    .build(),
            );
        }
        Ok(Self {
            agent: config.build().into(),
            base: args.url.trim_end_matches('/').to_owned(),
            auth: format!("Bearer {token}"),
        })
    }

    /// Sends a request; the JSON answer of a success, or the node's problem as an error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |e: ureq::Error| CliError::Message(format!("{}: {e}", self.base));
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &self.auth).call(),
            ("PUT", Some(body)) => self.agent.put(&url).header("Authorization", &self.auth).send_json(body),
            (_, Some(body)) => self
                .agent
                .post(&url)
                .header("Authorization", &self.auth)
                .send_json(body),
            (_, None) => self.agent.post(&url).header("Authorization", &self.auth).send_empty(),
        }
        .map_err(unreachable)?;
        let status = response.status();
        let text = response.into_body().read_to_string().map_err(unreachable)?;
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|_| {
                CliError::Message(format!("{}: answered {status} with a body that is not JSON", self.base))
            })?
        };
        if status.is_success() {
            return Ok(value);
        }
        Err(CliError::Message(
            match (value["code"].as_str(), value["detail"].as_str()) {
                (Some(code), Some(detail)) => format!("{} {code}: {detail}", status.as_u16()),
                _ => format!("{} {status}", self.base),
            },
        ))
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("-")
}

fn num_of(v: &Value, key: &str) -> String {
    v[key].as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string())
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// Whether `target` is a node id (keysend), an offer, or else an invoice.
fn pay_body(
    target: &str,
    amount_msat: Option<u64>,
    max_fee_msat: Option<u64>,
    quantity: Option<u64>,
    payer_note: Option<String>,
) -> Result<Value, CliError> {
    let t = target.trim();
    let bare = t
        .strip_prefix("lightning:")
        .or_else(|| t.strip_prefix("LIGHTNING:"))
        .unwrap_or(t);
    let mut body = json!({});
    if bare.len() == 66 && bare.bytes().all(|b| b.is_ascii_hexdigit()) {
        if amount_msat.is_none() {
            return Err(CliError::Usage("keysend to a node id needs --amount-msat".to_owned()));
        }
        body["keysend"] = json!(bare);
    } else if bare.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("lno1")) {
        body["offer"] = json!(t);
    } else {
        body["invoice"] = json!(t);
    }
    if body.get("offer").is_none() && (quantity.is_some() || payer_note.is_some()) {
        return Err(CliError::Usage(
            "--quantity and --payer-note are for an offer".to_owned(),
        ));
    }
    for (key, value) in [
        ("amount_msat", amount_msat.map(Value::from)),
        ("max_fee_msat", max_fee_msat.map(Value::from)),
        ("quantity", quantity.map(Value::from)),
        ("payer_note", payer_note.map(Value::from)),
    ] {
        if let Some(value) = value {
            body[key] = value;
        }
    }
    Ok(body)
}

fn channel_line(c: &Value) -> String {
    let state = if c["is_usable"] == true {
        "usable"
    } else if c["is_channel_ready"] == true {
        "ready"
    } else {
        "pending"
    };
    format!(
        "{}\t{}\t{} sat\tout {} msat\tin {} msat\t{state}",
        str_of(c, "user_channel_id"),
        str_of(c, "counterparty_node_id"),
        num_of(c, "channel_value_sat"),
        num_of(c, "outbound_capacity_msat"),
        num_of(c, "inbound_capacity_msat"),
    )
}

fn payment_line(p: &Value) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{} msat\tfee {} msat",
        str_of(p, "id"),
        str_of(p, "direction"),
        str_of(p, "kind"),
        str_of(p, "status"),
        num_of(p, "amount_msat"),
        num_of(p, "fee_paid_msat"),
    )
}

fn info_lines(i: &Value) -> String {
    let b = &i["balances"];
    format!(
        "node id       {}\nnetwork       {}\nalias         {}\naddresses     {}\nbest block    {} {}\n\
         on-chain      {} sat ({} spendable, {} anchor reserve)\nlightning     {} sat\n\
         channels      {} ({} usable), {} peers connected\npolicy        {}",
        str_of(i, "node_id"),
        str_of(i, "network"),
        str_of(i, "alias"),
        i["listening_addresses"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".to_owned()),
        num_of(&i["best_block"], "height"),
        str_of(&i["best_block"], "hash"),
        num_of(b, "onchain_total_sat"),
        num_of(b, "onchain_spendable_sat"),
        num_of(b, "anchor_reserve_sat"),
        num_of(b, "lightning_sat"),
        num_of(i, "channels"),
        num_of(i, "usable_channels"),
        num_of(i, "connected_peers"),
        i["policy_wallet"]
            .as_str()
            .map_or_else(|| "the node's own".to_owned(), |w| format!("wallet {w}'s")),
    )
}

pub(crate) fn ln(data_dir: &Path, command: LnCommand) -> Result<(), CliError> {
    let (args, method, path, body) = match &command {
        LnCommand::Info { node } => (node, "GET", "/v1/ln/info".to_owned(), None),
        LnCommand::Address { node } => (node, "POST", "/v1/ln/address".to_owned(), None),
        LnCommand::Connect { peer, no_persist, node } => (
            node,
            "POST",
            "/v1/ln/peers".to_owned(),
            Some(json!({"peer": peer, "persist": !no_persist})),
        ),
        LnCommand::Open {
            peer,
            amount,
            push_msat,
            announce,
            node,
        } => {
            let mut body = json!({"peer": peer, "amount_sat": amount, "announce": announce});
            if let Some(push) = push_msat {
                body["push_msat"] = json!(push);
            }
            (node, "POST", "/v1/ln/channels".to_owned(), Some(body))
        }
        LnCommand::Close { id, force, node } => {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CliError::Usage(format!(
                    "{id:?} is not a user channel id (the decimal number `anya ln channels` shows first)"
                )));
            }
            (
                node,
                "POST",
                format!("/v1/ln/channels/{id}/close"),
                Some(json!({"force": force})),
            )
        }
        LnCommand::Invoice {
            amount_msat,
            description,
            expiry,
            node,
        } => {
            let mut body = json!({"description": description, "expiry_secs": expiry});
            if let Some(a) = amount_msat {
                body["amount_msat"] = json!(a);
            }
            (node, "POST", "/v1/ln/invoices".to_owned(), Some(body))
        }
        LnCommand::Offer {
            amount_msat,
            description,
            expiry,
            node,
        } => {
            let mut body = json!({"description": description});
            if let Some(a) = amount_msat {
                body["amount_msat"] = json!(a);
            }
            if let Some(e) = expiry {
                body["expiry_secs"] = json!(e);
            }
            (node, "POST", "/v1/ln/offers".to_owned(), Some(body))
        }
        LnCommand::Pay {
            target,
            amount_msat,
            max_fee_msat,
            quantity,
            payer_note,
            node,
        } => (
            node,
            "POST",
            "/v1/ln/payments".to_owned(),
            Some(pay_body(
                target,
                *amount_msat,
                *max_fee_msat,
                *quantity,
                payer_note.clone(),
            )?),
        ),
        LnCommand::Channels { node } => (node, "GET", "/v1/ln/channels".to_owned(), None),
        LnCommand::Payments { id, node } => match id {
            Some(id) => {
                if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(CliError::Usage(format!(
                        "{id:?} is not a payment id (64 hex characters)"
                    )));
                }
                (node, "GET", format!("/v1/ln/payments/{id}"), None)
            }
            None => (node, "GET", "/v1/ln/payments".to_owned(), None),
        },
        LnCommand::Decode { request, node } => (
            node,
            "POST",
            "/v1/ln/decode".to_owned(),
            Some(json!({"request": request})),
        ),
    };
    let answer = Api::new(args, data_dir)?.call(method, &path, body)?;
    if args.json {
        println!("{}", pretty(&answer));
        return Ok(());
    }
    match command {
        LnCommand::Info { .. } => println!("{}", info_lines(&answer)),
        LnCommand::Address { .. } => println!("{}", str_of(&answer, "address")),
        LnCommand::Connect { .. } => println!(
            "connected to {}@{}",
            str_of(&answer, "node_id"),
            str_of(&answer, "address")
        ),
        LnCommand::Open { .. } => {
            println!("{}", str_of(&answer, "user_channel_id"));
            eprintln!("the channel is opening: it is usable once its funding confirmed (`anya ln channels`)");
        }
        LnCommand::Close { .. } => println!("closing channel {}", str_of(&answer, "channel_id")),
        LnCommand::Invoice { .. } => {
            println!("{}", str_of(&answer, "invoice"));
            eprintln!("payment hash {}", str_of(&answer, "payment_hash"));
        }
        LnCommand::Offer { .. } => println!("{}", str_of(&answer, "offer")),
        LnCommand::Pay { .. } => {
            println!("{}", str_of(&answer, "payment_id"));
            eprintln!(
                "payment under way: `anya ln payments {}` shows how it ends",
                str_of(&answer, "payment_id")
            );
        }
        LnCommand::Channels { .. } => {
            for c in answer.as_array().into_iter().flatten() {
                println!("{}", channel_line(c));
            }
        }
        LnCommand::Payments { id: None, .. } => {
            for p in answer.as_array().into_iter().flatten() {
                println!("{}", payment_line(p));
            }
        }
        LnCommand::Payments { id: Some(_), .. } | LnCommand::Decode { .. } => println!("{}", pretty(&answer)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";

    #[test]
    fn pay_names_its_target_by_its_shape() {
        let body = pay_body(ID, Some(1000), None, None, None).expect("keysend");
        assert_eq!(body, json!({"keysend": ID, "amount_msat": 1000}));
        assert!(pay_body(ID, None, None, None, None).is_err(), "keysend needs an amount");
        let body = pay_body("lno1qgsq", None, Some(5), Some(2), Some("hi".into())).expect("offer");
        assert_eq!(
            body,
            json!({"offer": "lno1qgsq", "max_fee_msat": 5, "quantity": 2, "payer_note": "hi"})
        );
        let body = pay_body("lightning:LNBCRT1xyz", None, None, None, None).expect("invoice");
        assert_eq!(body, json!({"invoice": "lightning:LNBCRT1xyz"}));
        assert!(
            pay_body("lnbcrt1xyz", None, None, Some(1), None).is_err(),
            "quantity is for offers"
        );
    }

    #[test]
    fn lines_show_what_matters() {
        let c = json!({
            "user_channel_id": "42", "counterparty_node_id": ID, "channel_value_sat": 1000,
            "outbound_capacity_msat": 5, "inbound_capacity_msat": 6, "is_channel_ready": true, "is_usable": false
        });
        assert_eq!(
            channel_line(&c),
            format!("42\t{ID}\t1000 sat\tout 5 msat\tin 6 msat\tready")
        );
        let p = json!({"id": "ab", "direction": "outbound", "kind": "bolt11", "status": "pending", "amount_msat": 7});
        assert_eq!(payment_line(&p), "ab\toutbound\tbolt11\tpending\t7 msat\tfee - msat");
        let i = json!({"node_id": ID, "balances": {}, "best_block": {"height": 3}, "policy_wallet": "hot"});
        let lines = info_lines(&i);
        assert!(
            lines.contains("best block    3 -") && lines.contains("wallet hot's"),
            "{lines}"
        );
    }

    #[test]
    fn the_token_comes_from_the_cookie_and_a_missing_one_says_how() {
        let dir = tempfile::tempdir().expect("dir");
        let args = |cookie: Option<PathBuf>| NodeArgs {
            url: "http://127.0.0.1:1/".to_owned(),
            token: None,
            cookie,
            cacert: None,
            json: false,
        };
        let err = Api::new(&args(None), dir.path()).err().expect("no cookie");
        assert!(err.to_string().contains("--token"), "{err}");
        std::fs::write(dir.path().join(".cookie"), "anya_abc_def\n").expect("cookie");
        let api = Api::new(&args(None), dir.path()).expect("the cookie");
        assert_eq!(
            (api.auth.as_str(), api.base.as_str()),
            ("Bearer anya_abc_def", "http://127.0.0.1:1")
        );
        // Nothing listens on port 1: the error names the node, not the token.
        let err = api.call("GET", "/v1/ln/info", None).expect_err("unreachable");
        assert!(
            err.to_string().contains("127.0.0.1:1") && !err.to_string().contains("anya_abc"),
            "{err}"
        );
    }
}
