//! The contract every part of the system shares: the write region's command API
//! (`trading.v1`), the read regions' query API (`portfolio.v1`) and the events that flow between
//! them (`events.v1`), plus the encoded file descriptor set that servers register with gRPC
//! reflection so `grpcurl` needs no .proto files.

pub mod trading {
    pub mod v1 {
        tonic::include_proto!("trading.v1");
    }
}

pub mod portfolio {
    pub mod v1 {
        tonic::include_proto!("portfolio.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("events.v1");
    }
}

impl events::v1::EventEnvelope {
    /// The envelope of the next event of an aggregate: a fresh `event_id`, `body`'s type and
    /// schema version, stamped now. Correlation, causation and metadata are the caller's to add.
    pub fn stamp(
        aggregate_type: &str,
        aggregate_id: &str,
        version: u64,
        body: &events::v1::raw_event::Body,
    ) -> Self {
        Self {
            event_id: uuid::Uuid::new_v4().to_string(),
            event_type: body.event_type().to_owned(),
            schema_version: body.schema_version(),
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            version,
            occurred_at: Some(std::time::SystemTime::now().into()),
            ..Default::default()
        }
    }
}

impl events::v1::raw_event::Body {
    /// The envelope's `event_type` for this body.
    pub fn event_type(&self) -> &'static str {
        use events::v1::raw_event::Body;
        match self {
            Body::AccountOpened(_) => "AccountOpened",
            Body::CashDeposited(_) => "CashDeposited",
            Body::CashWithdrawn(_) => "CashWithdrawn",
            Body::TradeExecuted(_) => "TradeExecuted",
            Body::InstrumentUpserted(_) => "InstrumentUpserted",
            Body::PriceUpdated(_) => "PriceUpdated",
            Body::OrderAccepted(_) => "OrderAccepted",
            Body::OrderCanceled(_) => "OrderCanceled",
        }
    }

    /// The schema version writers stamp today; bumped when a type gains fields that readers of
    /// older events must upcast (TradeExecuted 2 added `notional`, 3 the order's progress).
    pub fn schema_version(&self) -> u32 {
        match self {
            Self::TradeExecuted(_) => 3,
            _ => 1,
        }
    }
}

impl events::v1::enriched_event::Body {
    /// The envelope's `event_type` for this body.
    pub fn event_type(&self) -> &'static str {
        use events::v1::enriched_event::Body;
        match self {
            Body::AccountRegistered(_) => "AccountRegistered",
            Body::CashBalanceChanged(_) => "CashBalanceChanged",
            Body::TradeProfitCalculated(_) => "TradeProfitCalculated",
            Body::PortfolioValueUpdated(_) => "PortfolioValueUpdated",
            Body::RiskThresholdBreached(_) => "RiskThresholdBreached",
            Body::InstrumentReferenceUpdated(_) => "InstrumentReferenceUpdated",
            Body::MarketPriceChanged(_) => "MarketPriceChanged",
            Body::OrderUpdated(_) => "OrderUpdated",
        }
    }
}

/// Encoded `FileDescriptorSet` of every schema above, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
