//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does:
//! the holder renews `renewTime` every `renew_every`; another replica takes over only after
//! `leaseDurationSeconds` without a renewal. Updates carry the Lease's `resourceVersion`, so two
//! replicas racing for an expired Lease cannot both win (the loser gets 409 Conflict).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

/// What to do with the Lease as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAction {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Someone else held it but let it expire: take it over.
    Takeover,
    /// Someone else holds it.
    Wait {
        /// Current holder.
        holder: String,
    },
}

/// Decide from the observed Lease spec.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseAction {
    let Some(spec) = spec else {
        return LeaseAction::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => LeaseAction::Renew,
        None | Some("") => LeaseAction::Takeover,
        Some(h) => {
            let duration =
                SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15) as i64);
            let last = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0);
            match last {
                Some(t) if t + duration > now => LeaseAction::Wait {
                    holder: h.to_string(),
                },
                _ => LeaseAction::Takeover,
            }
        }
    }
}

/// What to do after trying for the Lease failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorAction {
    /// Retrying cannot help until someone acts: stop, with this explanation.
    Fail(String),
    /// Try again later. `log` is false while the error is the one already logged, so a lasting
    /// problem is reported once with what to do about it, not at every attempt.
    Retry {
        /// Whether to log it (a new error).
        log: bool,
        /// What to do about it, when known.
        hint: Option<String>,
    },
}

/// Decide what to do about `err`, an error of [`LeaderElector::try_acquire_or_renew`] for a
/// Lease in `namespace`; `previous` is the last error seen (its `to_string()`), if the last
/// attempt failed too.
///
/// A Lease that does not exist is created, so a 404 means its namespace does not exist: common
/// out of cluster, where `--lease-namespace` defaults to `textrec-system`. Nothing fixes that by
/// waiting, so it fails at once and says how to proceed.
pub fn on_error(err: &kube::Error, namespace: &str, previous: Option<&str>) -> ErrorAction {
    if let kube::Error::Api(status) = err {
        let namespace_missing = status.code == 404
            && (status
                .details
                .as_ref()
                .is_some_and(|d| d.kind == "namespaces")
                || status.message.starts_with("namespaces "));
        if namespace_missing {
            return ErrorAction::Fail(format!(
                "leader election: the Lease's namespace {namespace:?} does not exist. Create it \
                 (`kubectl create namespace {namespace}`), choose another with \
                 --lease-namespace (or POD_NAMESPACE), or run a single replica with \
                 --no-leader-election"
            ));
        }
    }
    let hint = match err {
        kube::Error::Api(s) if s.code == 403 => Some(format!(
            "the operator may not get, create or update Leases in namespace {namespace:?}: \
             grant it the leader-election Role of operator/rbac.yaml there"
        )),
        _ => None,
    };
    ErrorAction::Retry {
        log: previous != Some(err.to_string().as_str()),
        hint,
    }
}

/// A Lease-based lock.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
}

impl LeaderElector {
    /// Lock `name` (in the Api's namespace) as `identity`.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, lease_duration: Duration) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            lease_duration,
        }
    }

    fn spec(&self, prev: Option<&LeaseSpec>, takeover: bool) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let transitions = prev.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs() as i32),
            acquire_time: if takeover || prev.is_none() {
                Some(now.clone())
            } else {
                prev.and_then(|p| p.acquire_time.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if takeover {
                transitions + 1
            } else {
                transitions
            }),
            ..Default::default()
        }
    }

    /// Try to acquire or renew; `Ok(true)` while we lead.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let action = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            Timestamp::now(),
        );
        let result = match (&action, current) {
            (LeaseAction::Wait { .. }, _) => return Ok(false),
            (LeaseAction::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(None, false)),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (_, Some(mut lease)) => {
                let takeover = action == LeaseAction::Takeover;
                lease.spec = Some(self.spec(lease.spec.as_ref(), takeover));
                // replace() sends the resourceVersion we read: a concurrent writer makes it 409.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (_, None) => unreachable!("Renew/Takeover imply an existing Lease"),
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up (on shutdown) so another replica takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        if let Some(mut lease) = self.api.get_opt(&self.name).await? {
            if lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str())
            {
                let spec = lease.spec.get_or_insert_with(Default::default);
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64, dur: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            lease_duration_seconds: Some(dur),
            ..Default::default()
        }
    }

    fn api_error(code: u16, message: &str, kind: Option<&str>) -> kube::Error {
        let v = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "code": code, "message": message, "reason": "NotFound",
            "details": kind.map(|k| serde_json::json!({"name": "textrec-system", "kind": k}))});
        kube::Error::Api(Box::new(serde_json::from_value(v).unwrap()))
    }

    #[test]
    fn a_missing_lease_namespace_fails_at_once_saying_what_to_do() {
        let err = api_error(
            404,
            "namespaces \"textrec-system\" not found",
            Some("namespaces"),
        );
        let ErrorAction::Fail(msg) = on_error(&err, "textrec-system", None) else {
            panic!("not fatal")
        };
        for want in [
            "kubectl create namespace textrec-system",
            "--lease-namespace",
            "--no-leader-election",
        ] {
            assert!(msg.contains(want), "{want} missing from {msg}");
        }
        // The message alone is enough (no details).
        let err = api_error(404, "namespaces \"textrec-system\" not found", None);
        assert!(matches!(
            on_error(&err, "textrec-system", None),
            ErrorAction::Fail(_)
        ));
    }

    #[test]
    fn other_errors_are_retried_and_logged_once_while_they_last() {
        // The Lease vanished between read and write: a race, not a namespace problem.
        let gone = api_error(404, "leases \"l\" not found", Some("leases"));
        assert_eq!(
            on_error(&gone, "ns", None),
            ErrorAction::Retry {
                log: true,
                hint: None
            }
        );
        let forbidden = api_error(403, "leases is forbidden", None);
        let first = on_error(&forbidden, "ns", Some(&gone.to_string()));
        let ErrorAction::Retry {
            log: true,
            hint: Some(hint),
        } = first
        else {
            panic!("{first:?}")
        };
        assert!(hint.contains("leader-election Role"), "{hint}");
        let again = on_error(&forbidden, "ns", Some(&forbidden.to_string()));
        assert!(matches!(again, ErrorAction::Retry { log: false, .. }));
    }

    #[test]
    fn lease_decisions() {
        let now = Timestamp::from_second(1000).unwrap();
        assert_eq!(decide(None, "a", now), LeaseAction::Create);
        assert_eq!(
            decide(Some(&spec("a", 990, 15)), "a", now),
            LeaseAction::Renew
        );
        assert_eq!(
            decide(Some(&spec("b", 990, 15)), "a", now),
            LeaseAction::Wait { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&spec("b", 980, 15)), "a", now),
            LeaseAction::Takeover
        );
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "a", now),
            LeaseAction::Takeover
        );
    }
}
