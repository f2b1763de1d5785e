//! The on-premises side of a scenario: who may log on to EWS with which rights, the EWS URLs
//! Autodiscover hands out, and the Autodiscover answers of the virtual hosts.

use serde::Deserialize;

use crate::directory::User;

/// `[exchange]` in a scenario file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExchangeSpec {
    /// EWS URL Autodiscover gives as internal (`EXCH`); default: the emulator's own.
    pub internal_ews_url: Option<String>,
    /// EWS URL Autodiscover gives as external (`EXPR`); default: the emulator's own.
    pub external_ews_url: Option<String>,
    /// On-premises accounts without a Graph user (service or monitor accounts).
    pub accounts: Vec<AccountSpec>,
    /// Answers of virtual Autodiscover hosts (by Host header).
    pub autodiscover_hosts: Vec<HostSpec>,
    /// `redirectAddr` answers: Autodiscover for `address` names `to` instead.
    pub redirect_addr: Vec<RedirectAddrSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSpec {
    pub address: String,
    pub password: String,
    pub display_name: Option<String>,
    #[serde(default)]
    pub impersonation: bool,
    /// Mailboxes (addresses) whose calendar folder this account holds Reviewer rights on; `"*"` = all.
    #[serde(default)]
    pub reviewer_of: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Host name as the client puts it in the Host header (no port).
    pub host: String,
    /// `settings` (default), `redirect_url`, `http_redirect` (302 to `url`), `not_found` (404),
    /// `unauthorized` (401 to everything), `error` (500).
    #[serde(default = "default_answer")]
    pub answer: String,
    pub url: Option<String>,
}

fn default_answer() -> String {
    "settings".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectAddrSpec {
    pub address: String,
    pub to: String,
}

/// Someone who can log on to EWS.
#[derive(Debug, Clone)]
pub struct Account {
    /// Primary SMTP address.
    pub address: String,
    pub user_principal_name: String,
    pub display_name: String,
    /// The directory user (mailbox) behind the account; `None` for on-premises-only accounts.
    pub user_index: Option<usize>,
    pub password: Option<String>,
    pub impersonation: bool,
    pub reviewer_of_all: bool,
    pub reviewer_of: Vec<usize>,
}

impl Account {
    pub fn local_part(&self) -> &str {
        self.user_principal_name
            .split_once('@')
            .map(|(local, _)| local)
            .unwrap_or(&self.user_principal_name)
    }
}

#[derive(Debug, Clone)]
pub enum HostAnswer {
    Settings,
    RedirectUrl(String),
    HttpRedirect(String),
    NotFound,
    Unauthorized,
    Error,
}

#[derive(Debug, Clone, Default)]
pub struct ExchangeSetup {
    pub accounts: Vec<Account>,
    pub internal_ews_url: Option<String>,
    pub external_ews_url: Option<String>,
    pub hosts: Vec<(String, HostAnswer)>,
    pub redirect_addr: Vec<(String, String)>,
    /// With `--generate-users`: the account with impersonation rights and the monitor account.
    pub ready_impersonation: Option<usize>,
    pub ready_delegate: Option<usize>,
}

/// Per directory user: impersonation right and the delegates holding Reviewer on its calendar.
pub struct UserRights<'a> {
    pub impersonation: bool,
    pub delegates: &'a [String],
}

impl ExchangeSetup {
    /// Builds the accounts: every directory user (with the scenario's password, if any) plus
    /// the on-premises-only accounts of `[exchange]`.
    pub fn build(
        spec: &ExchangeSpec,
        users: &[User],
        rights: &[UserRights<'_>],
    ) -> Result<ExchangeSetup, String> {
        let mut accounts: Vec<Account> = users
            .iter()
            .enumerate()
            .map(|(index, user)| Account {
                address: user.mail.clone(),
                user_principal_name: user.user_principal_name.clone(),
                display_name: user.display_name.clone(),
                user_index: Some(index),
                password: user.password.clone(),
                impersonation: rights.get(index).is_some_and(|right| right.impersonation),
                reviewer_of_all: false,
                reviewer_of: vec![],
            })
            .collect();
        let find_user = |address: &str| {
            users.iter().position(|user| {
                user.addresses().contains(&address.to_ascii_lowercase())
                    || user.id.eq_ignore_ascii_case(address)
            })
        };
        for account in &spec.accounts {
            if find_user(&account.address).is_some() {
                return Err(format!(
                    "exchange account '{}' is also a user: give the user a password and `impersonation` instead",
                    account.address
                ));
            }
            let mut reviewer_of = Vec::new();
            let mut reviewer_of_all = false;
            for target in &account.reviewer_of {
                if target == "*" {
                    reviewer_of_all = true;
                } else {
                    reviewer_of.push(find_user(target).ok_or_else(|| {
                        format!(
                            "exchange account '{}' is reviewer of unknown mailbox '{target}'",
                            account.address
                        )
                    })?);
                }
            }
            accounts.push(Account {
                address: account.address.clone(),
                user_principal_name: account.address.clone(),
                display_name: account
                    .display_name
                    .clone()
                    .unwrap_or_else(|| account.address.clone()),
                user_index: None,
                password: Some(account.password.clone()),
                impersonation: account.impersonation,
                reviewer_of_all,
                reviewer_of,
            });
        }
        for (owner, right) in rights.iter().enumerate() {
            for delegate in right.delegates {
                let position = accounts
                    .iter()
                    .position(|account| {
                        account.address.eq_ignore_ascii_case(delegate)
                            || account.user_principal_name.eq_ignore_ascii_case(delegate)
                            || account
                                .user_index
                                .is_some_and(|index| find_user(delegate) == Some(index))
                    })
                    .ok_or_else(|| format!("unknown delegate '{delegate}'"))?;
                accounts[position].reviewer_of.push(owner);
            }
        }
        let mut hosts = Vec::new();
        for host in &spec.autodiscover_hosts {
            let url = || {
                host.url
                    .clone()
                    .ok_or_else(|| format!("autodiscover host '{}' needs a url", host.host))
            };
            let answer = match host.answer.to_ascii_lowercase().as_str() {
                "settings" => HostAnswer::Settings,
                "redirect_url" | "redirecturl" => HostAnswer::RedirectUrl(url()?),
                "http_redirect" => HostAnswer::HttpRedirect(url()?),
                "not_found" => HostAnswer::NotFound,
                "unauthorized" => HostAnswer::Unauthorized,
                "error" => HostAnswer::Error,
                other => {
                    return Err(format!(
                        "autodiscover host '{}': unknown answer '{other}'",
                        host.host
                    ))
                }
            };
            hosts.push((host.host.to_ascii_lowercase(), answer));
        }
        let ready_impersonation = accounts
            .iter()
            .position(|account| account.impersonation && account.password.is_some());
        let ready_delegate = accounts.iter().position(|account| {
            (account.reviewer_of_all || !account.reviewer_of.is_empty())
                && account.password.is_some()
        });
        Ok(ExchangeSetup {
            accounts,
            internal_ews_url: spec.internal_ews_url.clone(),
            external_ews_url: spec.external_ews_url.clone(),
            hosts,
            redirect_addr: spec
                .redirect_addr
                .iter()
                .map(|redirect| (redirect.address.to_ascii_lowercase(), redirect.to.clone()))
                .collect(),
            ready_impersonation,
            ready_delegate,
        })
    }
}
