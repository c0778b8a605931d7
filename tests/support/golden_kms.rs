//! A stand-in for an AWS KMS key in the golden vectors (`tests/golden/v3/`): it says it is
//! KMS key `GOLDEN_KMS_ARN` and wraps with the local key in `golden-kms.key`, so the frozen
//! key-hierarchy vault can be written and read without a KMS server. Only the golden
//! vectors use it; the KMS path itself is tested against moto (tests/kms.rs).

use envfs::crypto::Secret32;
use envfs::format::{KeySlot, ProviderKind};
use envfs::keys::local::LocalKeyProvider;
use envfs::keys::{KeyContext, KeyProvider};
use std::path::Path;

pub const GOLDEN_KMS_ARN: &str = "arn:aws:kms:us-east-1:000000000000:key/golden-vector";

pub struct GoldenKms(pub LocalKeyProvider);

impl GoldenKms {
    pub fn load(path: &Path) -> GoldenKms {
        GoldenKms(LocalKeyProvider::load(path).expect("golden KMS stand-in key"))
    }
}

impl KeyProvider for GoldenKms {
    fn kind(&self) -> ProviderKind {
        ProviderKind::AwsKms
    }

    fn key_id(&self) -> &str {
        GOLDEN_KMS_ARN
    }

    fn wrap(&self, secret: &Secret32, ctx: &KeyContext) -> envfs::Result<KeySlot> {
        let inner = self.0.wrap(secret, ctx)?;
        Ok(KeySlot {
            provider: ProviderKind::AwsKms,
            key_id: GOLDEN_KMS_ARN.into(),
            wrapped: inner.wrapped,
        })
    }

    fn unwrap(&self, slot: &KeySlot, ctx: &KeyContext) -> envfs::Result<Secret32> {
        let inner = KeySlot {
            provider: ProviderKind::Local,
            key_id: self.0.key_id().into(),
            wrapped: slot.wrapped.clone(),
        };
        self.0.unwrap(&inner, ctx)
    }
}
