//! Invoices, offers and peer addresses from users. BOLT11 invoices are decoded with
//! lightning-invoice (signature, checksum and every BOLT11 rule checked; unknown required
//! features refused), then summarized for display, an API or a policy decision; BOLT12 offers
//! with LDK's offer parser; peer addresses with LDK's `SocketAddress`.

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::PublicKey;
use bitcoin::Network;
use ldk_node::lightning::ln::msgs::SocketAddress;
use ldk_node::lightning::offers::offer::Offer;
use ldk_node::lightning_invoice::{Bolt11Invoice, Bolt11InvoiceDescriptionRef};

use super::LightningError;

/// One hop of a route hint (BOLT11 `r`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintHop {
    /// The hop's node.
    pub node_id: PublicKey,
    /// The channel to the next hop.
    pub short_channel_id: u64,
    /// Base fee, in millisatoshis.
    pub fee_base_msat: u32,
    /// Proportional fee, in millionths.
    pub fee_proportional_millionths: u32,
    /// CLTV delta.
    pub cltv_expiry_delta: u16,
}

/// What an invoice asks for, field by field.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvoiceSummary {
    /// The network its currency prefix names.
    pub network: Network,
    /// The amount asked, if any, in millisatoshis.
    pub amount_msat: Option<u64>,
    /// When it was made (seconds since the epoch).
    pub timestamp: u64,
    /// Seconds after `timestamp` that it expires.
    pub expiry_secs: u64,
    /// The payment hash (`p`).
    pub payment_hash: [u8; 32],
    /// The payment secret (`s`).
    pub payment_secret: [u8; 32],
    /// The description (`d`), if given directly.
    pub description: Option<String>,
    /// The hash of the description (`h`), if given instead.
    pub description_hash: Option<[u8; 32]>,
    /// The minimum final CLTV delta (`c`, 18 if absent).
    pub min_final_cltv_expiry_delta: u64,
    /// The payee: the `n` field, or the key recovered from the signature.
    pub payee: PublicKey,
    /// On-chain fallback addresses (`f`).
    pub fallback_addresses: Vec<String>,
    /// Route hints (`r`), each a path of hops.
    pub route_hints: Vec<Vec<HintHop>>,
    /// The feature bits set (`9`).
    pub features: Vec<usize>,
    /// Payment metadata (`m`).
    pub payment_metadata: Option<Vec<u8>>,
}

impl InvoiceSummary {
    /// The summary of a decoded invoice.
    pub fn of(invoice: &Bolt11Invoice) -> Self {
        let (description, description_hash) = match invoice.description() {
            Bolt11InvoiceDescriptionRef::Direct(d) => (Some(d.as_inner().0.clone()), None),
            Bolt11InvoiceDescriptionRef::Hash(h) => (None, Some(h.0.to_byte_array())),
        };
        let features = invoice.features().map_or_else(Vec::new, |f| {
            f.le_flags()
                .iter()
                .enumerate()
                .flat_map(|(byte, bits)| (0..8).filter(move |b| bits & (1 << b) != 0).map(move |b| byte * 8 + b))
                .collect()
        });
        let route_hints = invoice
            .route_hints()
            .iter()
            .map(|hint| {
                hint.0
                    .iter()
                    .map(|hop| HintHop {
                        node_id: hop.src_node_id,
                        short_channel_id: hop.short_channel_id,
                        fee_base_msat: hop.fees.base_msat,
                        fee_proportional_millionths: hop.fees.proportional_millionths,
                        cltv_expiry_delta: hop.cltv_expiry_delta,
                    })
                    .collect()
            })
            .collect();
        Self {
            network: invoice.network(),
            amount_msat: invoice.amount_milli_satoshis(),
            timestamp: invoice.duration_since_epoch().as_secs(),
            expiry_secs: invoice.expiry_time().as_secs(),
            payment_hash: invoice.payment_hash().to_byte_array(),
            payment_secret: invoice.payment_secret().0,
            description,
            description_hash,
            min_final_cltv_expiry_delta: invoice.min_final_cltv_expiry_delta(),
            payee: invoice.get_payee_pub_key(),
            fallback_addresses: invoice.fallback_addresses().iter().map(ToString::to_string).collect(),
            route_hints,
            features,
            payment_metadata: invoice.payment_metadata().cloned(),
        }
    }
}

/// Decodes a BOLT11 invoice from a user (surrounding whitespace and a `lightning:` prefix
/// allowed): anything that is not a valid invoice, including one that requires features
/// nobody knows, is [`LightningError::InvalidInvoice`].
pub fn parse_invoice(text: &str) -> Result<Bolt11Invoice, LightningError> {
    Ok(strip_scheme(text).parse::<Bolt11Invoice>()?)
}

/// Decodes a BOLT12 offer (`lno1…`) from a user (surrounding whitespace and a `lightning:`
/// prefix allowed): anything that is not a valid offer is [`LightningError::InvalidOffer`].
pub fn parse_offer(text: &str) -> Result<Offer, LightningError> {
    let text = strip_scheme(text);
    text.parse::<Offer>()
        .map_err(|e| LightningError::InvalidOffer(format!("{e:?}")))
}

/// Decodes a peer's address, `<node id hex>@<host>:<port>` (a host name, an IPv4 or
/// bracketed IPv6 address, or an onion address): anything else is
/// [`LightningError::InvalidPeer`].
pub fn parse_peer(text: &str) -> Result<(PublicKey, SocketAddress), LightningError> {
    let text = text.trim();
    let (id, address) = text
        .split_once('@')
        .ok_or_else(|| LightningError::InvalidPeer(format!("{text:?} is not <node id>@<host>:<port>")))?;
    let id: PublicKey = id
        .parse()
        .map_err(|e| LightningError::InvalidPeer(format!("node id {id:?}: {e}")))?;
    let address: SocketAddress = address
        .parse()
        .map_err(|e| LightningError::InvalidPeer(format!("address {address:?}: {e:?}")))?;
    Ok((id, address))
}

fn strip_scheme(text: &str) -> &str {
    let text = text.trim();
    text.strip_prefix("lightning:")
        .or_else(|| text.strip_prefix("LIGHTNING:"))
        .unwrap_or(text)
}
