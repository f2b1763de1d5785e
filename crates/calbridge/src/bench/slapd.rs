//! An OpenLDAP `slapd` of our own on loopback, for the LDAP directory's tests and benchmark:
//! a temporary folder with a `slapd.conf`, a generated tree of people (several addresses each,
//! groups with a nested group) loaded with `slapadd`, a certificate from a CA made here for
//! StartTLS and ldaps, and a server size limit below the tree's size so that only paged reads
//! get everyone. Needs Debian's `slapd` (`apt-get install slapd ldap-utils`).
//!
//! The tree: `dc=example,dc=org` with `ou=people` (`uid=p00000` …, mail `p00000@corp.example`,
//! `proxyAddresses` `SMTP:` primary, two `smtp:` further addresses and an `X500:` value,
//! `msRTCSIP-PrimaryUserAddress` for even numbers, a `telephoneNumber` for all, `memberOf` of
//! their direct group), `ou=service`
//! (the bind account `cn=calbridge`) and `ou=groups`: `cn=phones` holds the first 100 people and
//! `cn=phones-nested`, which holds the next 50 and `cn=phones-deep` (10 more, and `cn=phones`
//! again: a loop).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The tree's suffix.
pub const SUFFIX: &str = "dc=example,dc=org";
/// The bind account and its password.
pub const BIND_DN: &str = "cn=calbridge,ou=service,dc=example,dc=org";
pub const BIND_PASSWORD: &str = "calbridge-bind-secret";
/// The tree's administrator (not subject to the size limit), for tests that change the tree.
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
pub const ADMIN_PASSWORD: &str = "calbridge-test-admin";
/// The server's size limit for a search without paging.
pub const SIZE_LIMIT: usize = 500;
/// The group of `member_of` tests, and how many people it holds at every depth.
pub const GROUP_DN: &str = "cn=phones,ou=groups,dc=example,dc=org";
pub const GROUP_DIRECT: usize = 100;
pub const GROUP_NESTED: usize = 50;
pub const GROUP_DEEP: usize = 10;

/// AD's attributes that OpenLDAP lacks, with their Active Directory OIDs, on an auxiliary class.
/// `memberOf` holds the direct groups, as Active Directory's does (written into the tree here
/// rather than kept by OpenLDAP's memberof overlay, which slapadd does not run).
const SCHEMA: &str = "attributetype ( 1.2.840.113556.1.2.210 NAME 'proxyAddresses'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
attributetype ( 1.2.840.113556.1.6.13.3.1 NAME 'msRTCSIP-PrimaryUserAddress'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.2.102 NAME 'memberOf'
  EQUALITY distinguishedNameMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.12 )
objectclass ( 1.3.6.1.4.1.32473.1.1 NAME 'calbridgeTestPerson' SUP top AUXILIARY
  MAY ( proxyAddresses $ msRTCSIP-PrimaryUserAddress $ memberOf ) )
";

/// The address of person `index`.
pub fn address_of(index: usize) -> String {
    format!("p{index:05}@corp.example")
}

/// Whether `slapd` and `slapadd` are installed.
pub fn available() -> bool {
    Path::new(SLAPD).exists() && Path::new(SLAPADD).exists()
}

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";

/// A running (or stopped) `slapd` of our own; stopped when dropped.
pub struct TestSlapd {
    folder: tempfile::TempDir,
    child: Option<Child>,
    /// `ldap://127.0.0.1:PORT` (StartTLS offered).
    pub ldap_url: String,
    /// `ldaps://127.0.0.1:PORT`.
    pub ldaps_url: String,
    /// The PEM file of the CA that signed the server's certificate.
    pub ca_file: PathBuf,
    /// How many people the tree holds.
    pub n_people: usize,
}

impl TestSlapd {
    /// Makes the tree of `n_people` and starts the server.
    pub fn start(n_people: usize) -> anyhow::Result<TestSlapd> {
        if !available() {
            bail!("{SLAPD} is not installed (apt-get install slapd ldap-utils)");
        }
        let folder = tempfile::Builder::new()
            .prefix("calbridge-slapd-")
            .tempdir()
            .context("a temporary folder for slapd")?;
        let dir = folder.path().to_path_buf();
        std::fs::create_dir_all(dir.join("db"))?;
        let ca_file = dir.join("ca.pem");
        write_certificates(&dir, &ca_file)?;
        std::fs::write(dir.join("calbridge-test.schema"), SCHEMA)?;
        std::fs::write(dir.join("slapd.conf"), slapd_conf(&dir))?;
        load_tree(&dir, n_people)?;
        let ldap_port = free_port()?;
        let ldaps_port = free_port()?;
        let mut slapd = TestSlapd {
            folder,
            child: None,
            ldap_url: format!("ldap://127.0.0.1:{ldap_port}"),
            ldaps_url: format!("ldaps://127.0.0.1:{ldaps_port}"),
            ca_file,
            n_people,
        };
        slapd.resume()?;
        Ok(slapd)
    }

    /// The folder of the server's files.
    pub fn folder(&self) -> &Path {
        self.folder.path()
    }

    /// Starts the server again on the same ports and tree (after [`TestSlapd::stop`]).
    pub fn resume(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let dir = self.folder.path();
        let log = std::fs::File::create(dir.join("slapd.log"))?;
        // `-d 0`: stay in the foreground (a child we can stop), logging nothing but errors.
        let child = Command::new(SLAPD)
            .arg("-d")
            .arg("0")
            .arg("-f")
            .arg(dir.join("slapd.conf"))
            .arg("-h")
            .arg(format!("{}/ {}/", self.ldap_url, self.ldaps_url))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting slapd")?;
        self.child = Some(child);
        let started = Instant::now();
        let ports: Vec<String> = [&self.ldap_url, &self.ldaps_url]
            .iter()
            .map(|url| {
                url.trim_start_matches("ldaps://")
                    .trim_start_matches("ldap://")
                    .to_string()
            })
            .collect();
        loop {
            if ports
                .iter()
                .all(|address| std::net::TcpStream::connect(address).is_ok())
            {
                return Ok(());
            }
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    bail!(
                        "slapd exited at start ({status}): {}",
                        std::fs::read_to_string(dir.join("slapd.log")).unwrap_or_default()
                    );
                }
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("slapd did not listen within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the whole tree at once with the generated tree of `n_people` (the server is
    /// stopped meanwhile): from a reader's side the directory changes in one step.
    pub fn replace_tree(&mut self, n_people: usize) -> anyhow::Result<()> {
        self.stop();
        let db = self.folder.path().join("db");
        std::fs::remove_dir_all(&db)?;
        std::fs::create_dir_all(&db)?;
        load_tree(self.folder.path(), n_people)?;
        self.n_people = n_people;
        self.resume()
    }

    /// A connection bound as the tree's administrator, to change the tree while a test runs.
    pub async fn as_admin(&self) -> anyhow::Result<ldap3::Ldap> {
        let (connection, mut ldap) = ldap3::LdapConnAsync::new(&self.ldap_url).await?;
        ldap3::drive!(connection);
        ldap.simple_bind(ADMIN_DN, ADMIN_PASSWORD)
            .await?
            .success()?;
        Ok(ldap)
    }

    /// The DN of person `index`.
    pub fn person_dn(index: usize) -> String {
        format!("uid=p{index:05},ou=people,{SUFFIX}")
    }

    /// Stops the server (SIGKILL: as a crash or a pulled cable would); the tree stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestSlapd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn slapd_conf(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include {dir}/calbridge-test.schema
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile {dir}/ca.pem
TLSCertificateFile {dir}/server.pem
TLSCertificateKeyFile {dir}/server.key
sizelimit {SIZE_LIMIT}

database mdb
suffix \"{SUFFIX}\"
rootdn \"{ADMIN_DN}\"
rootpw {ADMIN_PASSWORD}
directory {dir}/db
maxsize 2147483648
# Without paging a search returns at most {SIZE_LIMIT} entries; paged searches get everyone.
limits users size.soft={SIZE_LIMIT} size.hard={SIZE_LIMIT} size.prtotal=unlimited
index objectClass eq
index mail eq
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
"
    )
}

/// Loads the generated tree of `n_people` into the (stopped) server's empty database.
fn load_tree(dir: &Path, n_people: usize) -> anyhow::Result<()> {
    let ldif = dir.join("tree.ldif");
    std::fs::write(&ldif, tree_ldif(n_people))?;
    let loaded = Command::new(SLAPADD)
        .arg("-q")
        .arg("-f")
        .arg(dir.join("slapd.conf"))
        .arg("-l")
        .arg(&ldif)
        .output()
        .context("running slapadd")?;
    if !loaded.status.success() {
        bail!(
            "slapadd failed: {}",
            String::from_utf8_lossy(&loaded.stderr)
        );
    }
    let _ = std::fs::remove_file(&ldif);
    Ok(())
}

/// The generated tree as LDIF.
pub fn tree_ldif(n_people: usize) -> String {
    let mut out = String::with_capacity(n_people * 600 + 4096);
    out.push_str(&format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
         dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=service,{SUFFIX}\nobjectClass: organizationalUnit\nou: service\n\n\
         dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n\
         dn: {BIND_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: calbridge\nuserPassword: {BIND_PASSWORD}\n\n"
    ));
    for index in 0..n_people {
        let uid = format!("p{index:05}");
        out.push_str(&format!(
            "dn: uid={uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nobjectClass: calbridgeTestPerson\nuid: {uid}\ncn: Person {index}\nsn: {index}\ndisplayName: Person {index}\nmail: {uid}@corp.example\nproxyAddresses: smtp:person.{index}@corp.example\nproxyAddresses: SMTP:{uid}@corp.example\nproxyAddresses: X500:/o=Example/ou=people/cn={uid}\nproxyAddresses: smtp:{uid}@legacy.example\ntelephoneNumber: +49 30 1{index:05}\n"
        ));
        if index % 2 == 0 {
            out.push_str(&format!(
                "msRTCSIP-PrimaryUserAddress: sip:{uid}@corp.example\n"
            ));
        }
        let direct_group = if index < GROUP_DIRECT {
            Some("phones")
        } else if index < GROUP_DIRECT + GROUP_NESTED {
            Some("phones-nested")
        } else if index < GROUP_DIRECT + GROUP_NESTED + GROUP_DEEP {
            Some("phones-deep")
        } else {
            None
        };
        if let Some(group) = direct_group {
            out.push_str(&format!("memberOf: cn={group},ou=groups,{SUFFIX}\n"));
        }
        out.push('\n');
    }
    let person = |index: usize| format!("uid=p{index:05},ou=people,{SUFFIX}");
    let group = |name: &str, members: Vec<String>| {
        let mut text =
            format!("dn: cn={name},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {name}\n");
        for member in members {
            text.push_str(&format!("member: {member}\n"));
        }
        text.push('\n');
        text
    };
    let direct_end = GROUP_DIRECT.min(n_people);
    let nested_end = (GROUP_DIRECT + GROUP_NESTED).min(n_people);
    let deep_end = (GROUP_DIRECT + GROUP_NESTED + GROUP_DEEP).min(n_people);
    let mut phones: Vec<String> = (0..direct_end).map(person).collect();
    phones.push(format!("cn=phones-nested,ou=groups,{SUFFIX}"));
    let mut nested: Vec<String> = (direct_end..nested_end).map(person).collect();
    nested.push(format!("cn=phones-deep,ou=groups,{SUFFIX}"));
    let mut deep: Vec<String> = (nested_end..deep_end).map(person).collect();
    // A loop back to the top group: expanding must stop.
    deep.push(GROUP_DN.to_string());
    out.push_str(&group("phones", phones));
    out.push_str(&group("phones-nested", nested));
    out.push_str(&group("phones-deep", deep));
    out
}

/// A CA and a server certificate for 127.0.0.1 and localhost; the CA goes to `ca_file`.
fn write_certificates(dir: &Path, ca_file: &Path) -> anyhow::Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::CommonName, "calbridge test LDAP CA");
    ca_params.distinguished_name = ca_name;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_certificate = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate()?;
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let mut server_name = DistinguishedName::new();
    server_name.push(DnType::CommonName, "calbridge test slapd");
    server_params.distinguished_name = server_name;
    server_params.use_authority_key_identifier_extension = true;
    let server_certificate = server_params.signed_by(&server_key, &issuer)?;
    std::fs::write(ca_file, ca_certificate.pem())?;
    std::fs::write(dir.join("server.pem"), server_certificate.pem())?;
    std::fs::write(dir.join("server.key"), server_key.serialize_pem())?;
    Ok(())
}
