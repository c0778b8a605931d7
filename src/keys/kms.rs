//! The AWS KMS key provider: every DEK comes from `GenerateDataKey` and is unwrapped with
//! `Decrypt`, under a KMS key that never leaves KMS.
//!
//! The SDK is async; the filesystem is not. The provider owns a small tokio runtime and blocks
//! on it, so FUSE worker threads simply wait for their KMS call. Every call passes the KeyId
//! and an EncryptionContext naming the vault and file (ids only), so CloudTrail shows which
//! file was opened and a wrapped key copied to another file does not decrypt.
//!
//! Region, credentials and endpoint come from the standard AWS chain (environment,
//! profile, `AWS_ENDPOINT_URL_KMS`, instance roles). Startup checks both and reports a
//! missing one clearly instead of hanging on the instance-metadata probe.

use super::{KeyContext, KeyProvider};
use crate::crypto::Secret32;
use crate::error::{Error, Result};
use crate::format::{KeySlot, ProviderKind};
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use std::future::Future;
use std::time::Duration;
use zeroize::Zeroizing;

/// How long to wait for the credential chain at startup (the EC2 metadata probe can stall
/// for many seconds where nothing answers).
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(8);

pub struct KmsKeyProvider {
    client: aws_sdk_kms::Client,
    runtime: tokio::runtime::Runtime,
    /// The key's ARN (aliases are resolved once, so slots and pins name the key itself).
    arn: String,
    /// Where requests go, for messages.
    endpoint: String,
    /// Calls made and failed since the provider connected (`envfs status`).
    calls: super::CallCounts,
}

/// The region of a KMS key or alias ARN (`arn:aws:kms:REGION:ACCOUNT:…`).
fn arn_region(key: &str) -> Option<&str> {
    let mut parts = key.strip_prefix("arn:")?.split(':');
    let (_partition, service, region) = (parts.next()?, parts.next()?, parts.next()?);
    (service == "kms" && !region.is_empty()).then_some(region)
}

fn service_error<E, R>(op: &str, key: &str, endpoint: &str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match &err {
        SdkError::ServiceError(ctx) => {
            let e = ctx.err();
            let code = e.code().unwrap_or("UnknownError");
            let message = e.message().unwrap_or("");
            match code {
                // The ciphertext is not one this key made under this context: not authentic.
                "InvalidCiphertextException" | "IncorrectKeyException" => {
                    Error::WrongKey(format!("KMS {op} with {key}: {code}: {message}"))
                }
                _ => Error::KeyService(format!("KMS {op} with {key}: {code}: {message}")),
            }
        }
        SdkError::TimeoutError(_) => Error::KeyService(format!(
            "KMS {op} with {key}: timed out talking to {endpoint}"
        )),
        SdkError::DispatchFailure(d) => Error::KeyService(format!(
            "KMS {op} with {key}: cannot reach {endpoint}: {}",
            if d.is_io() {
                "connection failed"
            } else if d.is_timeout() {
                "timed out"
            } else {
                "dispatch failure"
            }
        )),
        other => Error::KeyService(format!("KMS {op} with {key}: {other}")),
    }
}

impl KmsKeyProvider {
    /// Connect to KMS and resolve `key` (key id, ARN, alias name or alias ARN) to its ARN.
    pub fn connect(key: &str) -> Result<KmsKeyProvider> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("envfs-kms")
            .enable_all()
            .build()
            .map_err(|e| Error::KeyService(format!("cannot start the KMS client runtime: {e}")))?;
        // A key ARN names its region; KMS only answers for keys in the region a request goes
        // to, so a key of another region (a second-region or recovery key) is reached there.
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = arn_region(key) {
            loader = loader.region(aws_config::Region::new(region.to_string()));
        }
        let config = runtime.block_on(
            loader
                .retry_config(
                    // Throttling and 5xx are retried with exponential backoff and jitter,
                    // bounded in attempts and (below) in total time.
                    RetryConfig::standard()
                        .with_max_attempts(5)
                        .with_initial_backoff(Duration::from_millis(50))
                        .with_max_backoff(Duration::from_secs(2)),
                )
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(3))
                        .operation_attempt_timeout(Duration::from_secs(10))
                        .operation_timeout(Duration::from_secs(30))
                        .build(),
                )
                .load(),
        );
        if config.region().is_none() {
            return Err(Error::KeyService(
                "no AWS region configured: set AWS_REGION (or a region in the AWS profile)".into(),
            ));
        }
        let creds = config
            .credentials_provider()
            .ok_or_else(|| Error::KeyService("no AWS credentials provider is configured".into()))?;
        runtime
            .block_on(async {
                use aws_credential_types::provider::ProvideCredentials;
                tokio::time::timeout(CREDENTIALS_TIMEOUT, creds.provide_credentials()).await
            })
            .map_err(|_| {
                Error::KeyService(format!(
                    "no AWS credentials found within {}s (environment, profile, SSO, instance role)",
                    CREDENTIALS_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| Error::KeyService(format!("no usable AWS credentials: {e}")))?;
        let endpoint = std::env::var("AWS_ENDPOINT_URL_KMS")
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|_| format!("KMS in {}", config.region().expect("checked")));
        let client = aws_sdk_kms::Client::new(&config);
        let described = runtime
            .block_on(client.describe_key().key_id(key).send())
            .map_err(|e| service_error("DescribeKey", key, &endpoint, e))?;
        let arn = described
            .key_metadata()
            .map(|m| m.arn().unwrap_or(m.key_id()).to_string())
            .ok_or_else(|| Error::KeyService(format!("KMS DescribeKey {key}: no key metadata")))?;
        Ok(KmsKeyProvider {
            client,
            runtime,
            arn,
            endpoint,
            calls: Default::default(),
        })
    }

    pub fn arn(&self) -> &str {
        &self.arn
    }

    fn region(&self) -> Option<&str> {
        arn_region(&self.arn)
    }

    fn run<F: Future>(&self, fut: F) -> F::Output {
        self.runtime.block_on(fut)
    }

    /// Count a finished call of `op` (and whether it failed) and pass its result on.
    fn counted<T>(&self, op: &str, result: Result<T>) -> Result<T> {
        self.calls.record(op, &result);
        result
    }

    fn context(ctx: &KeyContext) -> std::collections::HashMap<String, String> {
        ctx.encryption_context()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    fn slot(&self, blob: &Blob) -> KeySlot {
        KeySlot {
            provider: ProviderKind::AwsKms,
            key_id: self.arn.clone(),
            wrapped: blob.as_ref().to_vec(),
        }
    }

    fn secret(&self, op: &str, plaintext: Option<&Blob>) -> Result<Secret32> {
        plaintext
            .and_then(|p| Secret32::from_slice(p.as_ref()))
            .ok_or_else(|| Error::KeyService(format!("KMS {op} returned no 32-byte key")))
    }
}

impl KeyProvider for KmsKeyProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::AwsKms
    }

    fn key_id(&self) -> &str {
        &self.arn
    }

    fn calls(&self) -> Option<&super::CallCounts> {
        Some(&self.calls)
    }

    fn generate(&self, ctx: &KeyContext) -> Result<(Secret32, KeySlot)> {
        let out = self.counted(
            "GenerateDataKey",
            self.run(
                self.client
                    .generate_data_key()
                    .key_id(&self.arn)
                    .key_spec(DataKeySpec::Aes256)
                    .set_encryption_context(Some(Self::context(ctx)))
                    .send(),
            )
            .map_err(|e| service_error("GenerateDataKey", &self.arn, &self.endpoint, e)),
        )?;
        let secret = self.secret("GenerateDataKey", out.plaintext())?;
        let blob = out.ciphertext_blob().ok_or_else(|| {
            Error::KeyService("KMS GenerateDataKey returned no ciphertext".into())
        })?;
        Ok((secret, self.slot(blob)))
    }

    fn wrap(&self, secret: &Secret32, ctx: &KeyContext) -> Result<KeySlot> {
        let plain = Zeroizing::new(secret.expose().to_vec());
        let out = self.counted(
            "Encrypt",
            self.run(
                self.client
                    .encrypt()
                    .key_id(&self.arn)
                    .plaintext(Blob::new(plain.to_vec()))
                    .set_encryption_context(Some(Self::context(ctx)))
                    .send(),
            )
            .map_err(|e| service_error("Encrypt", &self.arn, &self.endpoint, e)),
        )?;
        let blob = out
            .ciphertext_blob()
            .ok_or_else(|| Error::KeyService("KMS Encrypt returned no ciphertext".into()))?;
        Ok(self.slot(blob))
    }

    fn unwrap(&self, slot: &KeySlot, ctx: &KeyContext) -> Result<Secret32> {
        let out = self.counted(
            "Decrypt",
            self.run(
                self.client
                    .decrypt()
                    .key_id(&self.arn)
                    .ciphertext_blob(Blob::new(slot.wrapped.clone()))
                    .set_encryption_context(Some(Self::context(ctx)))
                    .send(),
            )
            .map_err(|e| service_error("Decrypt", &self.arn, &self.endpoint, e)),
        )?;
        self.secret("Decrypt", out.plaintext())
    }

    fn remote(&self) -> bool {
        true
    }

    fn rewrap_from(&self, source: &KeySlot, ctx: &KeyContext) -> Option<Result<KeySlot>> {
        // ReEncrypt works within one region only.
        if source.provider != ProviderKind::AwsKms || arn_region(&source.key_id) != self.region() {
            return None;
        }
        let result = self
            .run(
                self.client
                    .re_encrypt()
                    .ciphertext_blob(Blob::new(source.wrapped.clone()))
                    .source_key_id(&source.key_id)
                    .set_source_encryption_context(Some(Self::context(ctx)))
                    .destination_key_id(&self.arn)
                    .set_destination_encryption_context(Some(Self::context(ctx)))
                    .send(),
            )
            .map_err(|e| service_error("ReEncrypt", &self.arn, &self.endpoint, e));
        let result = self.counted("ReEncrypt", result).and_then(|out| {
            out.ciphertext_blob()
                .map(|b| self.slot(b))
                .ok_or_else(|| Error::KeyService("KMS ReEncrypt returned no ciphertext".into()))
        });
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::arn_region;

    #[test]
    fn regions_come_from_arns_only() {
        assert_eq!(
            arn_region("arn:aws:kms:eu-west-1:111122223333:key/abc"),
            Some("eu-west-1")
        );
        assert_eq!(
            arn_region("arn:aws:kms:us-east-2:111122223333:alias/x"),
            Some("us-east-2")
        );
        assert_eq!(arn_region("alias/x"), None);
        assert_eq!(arn_region("1234abcd-12ab"), None);
        assert_eq!(arn_region("arn:aws:s3:::bucket"), None);
    }
}
