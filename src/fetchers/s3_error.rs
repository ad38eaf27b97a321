//! The AWS SDK's errors as one line a person can act on: what failed, where,
//! and what to do. Missing credentials, access denied, no such bucket or
//! key, throttling, an endpoint that cannot be reached, a timeout; anything
//! else is its error chain, each cause once, never a `Debug` dump.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// What an S3 call's failure comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The same request will fail again until something changes (the
    /// credentials, the bucket, the key): said, not retried in a hurry.
    Refused(String),
    /// Worth retrying (unreachable, throttled, timed out, a server error).
    Transient(String),
}

impl Failure {
    /// Its message.
    pub fn message(&self) -> &str {
        match self {
            Failure::Refused(m) | Failure::Transient(m) => m,
        }
    }
}

/// The credential chain aws-config's default provider tries, in order.
const CHAIN: &str = "the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), the \
                     profile (AWS_PROFILE in ~/.aws/credentials and ~/.aws/config), web \
                     identity (AWS_WEB_IDENTITY_TOKEN_FILE), the ECS container role and EC2 \
                     instance metadata";

/// Explains `err`, a failed call on `at` (`s3://bucket/key at endpoint`)
/// in `bucket` for `key`.
pub fn explain<E>(
    err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    at: &str,
    bucket: &str,
    key: &str,
) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if no_credentials(err) {
        return Failure::Refused(format!(
            "no AWS credentials for {at}: none of {CHAIN} had any; set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an instance or task role"
        ));
    }
    match err {
        SdkError::TimeoutError(_) => {
            Failure::Transient(format!("S3 did not answer in time for {at}; retrying"))
        }
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            Failure::Transient(format!("S3 did not answer in time for {at}; retrying"))
        }
        SdkError::DispatchFailure(_) => Failure::Transient(format!(
            "cannot reach the S3 endpoint for {at}: {}; check endpoint_url, the region and the \
             network",
            innermost(err)
        )),
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("");
            // HeadObject answers carry no error code: go by status.
            let status = service.raw().status().as_u16();
            match code {
                "NoSuchBucket" => Failure::Refused(format!(
                    "no such bucket {bucket:?} ({at}); check the bucket's name and region"
                )),
                "NoSuchKey" => {
                    Failure::Refused(format!("no such key {key:?} in bucket {bucket:?} ({at})"))
                }
                "AccessDenied" | "AllAccessDisabled" => Failure::Refused(format!(
                    "access denied to {at} ({code}); the credentials' policy must allow this \
                     request"
                )),
                "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken"
                | "TokenRefreshRequired" => Failure::Refused(format!(
                    "access denied to {at} ({code}); check the credentials"
                )),
                "SlowDown"
                | "Throttling"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "TooManyRequestsException" => Failure::Transient(format!(
                    "S3 is throttling requests to {at} ({code}); backing off and retrying"
                )),
                _ if status == 404 => {
                    Failure::Refused(format!("no such key or bucket: {at} (404)"))
                }
                _ if status == 403 => Failure::Refused(format!(
                    "access denied to {at} (403); check the credentials and their policy"
                )),
                _ if status == 503 || status == 429 => Failure::Transient(format!(
                    "S3 is throttling requests to {at} ({status}); backing off and retrying"
                )),
                _ if status >= 500 => Failure::Transient(format!(
                    "S3 failed the request for {at}: {status}{}",
                    message(service.err())
                )),
                _ => Failure::Refused(format!(
                    "S3 refused the request for {at}: {status} {code}{}",
                    message(service.err())
                )),
            }
        }
        _ => Failure::Transient(format!(
            "S3 request for {at} failed: {}",
            crate::errors::display_chain(err)
        )),
    }
}

/// `: <message>` when the service said one.
fn message(err: &impl ProvideErrorMetadata) -> String {
    err.message().map(|m| format!(": {m}")).unwrap_or_default()
}

/// Whether the credential chain found no credentials (or failed to load
/// them) before the request was sent.
fn no_credentials(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
            .is_some()
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// The last cause in the chain: the one that says what happened
/// (`Connection refused (os error 111)`, `dns error: …`).
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}
