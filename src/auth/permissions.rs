//! Who may read or write a script or flow path (SPEC §4 "Permissions"): owners by path
//! (`u/<user>/…`, a folder's owners for `f/<folder>/…`), sharing through `extra_perms` of the
//! folder or the item (read = false, write = true), admins everything, operators never write.

use std::collections::HashMap;

use super::Access;

/// The sharing that applies to one path.
#[derive(Debug, Clone, Default)]
pub struct PathAcl {
    /// For `f/<folder>/…`: the folder's owners and extra_perms (None if the folder is unknown).
    pub folder: Option<FolderAcl>,
    /// Grants on the item itself: grantee → write.
    pub item: HashMap<String, bool>,
}

#[derive(Debug, Clone, Default)]
pub struct FolderAcl {
    pub owners: Vec<String>,
    pub extra_perms: HashMap<String, bool>,
}

/// The grantee names that stand for the caller: `u/<me>` and `g/<group>` of each group.
pub fn grantees(access: &Access) -> Vec<String> {
    std::iter::once(format!("u/{}", access.username))
        .chain(access.groups.iter().map(|g| format!("g/{g}")))
        .collect()
}

fn owns(access: &Access, path: &str, acl: &PathAcl) -> bool {
    let me = grantees(access);
    let mut parts = path.splitn(3, '/');
    match (parts.next(), parts.next()) {
        (Some("u"), Some(user)) => user == access.username.as_str(),
        (Some("f"), Some(_)) => acl
            .folder
            .as_ref()
            .is_some_and(|f| f.owners.iter().any(|o| me.contains(o))),
        _ => false,
    }
}

/// The strongest grant the caller holds: None, Some(false) = read, Some(true) = write.
fn granted(access: &Access, acl: &PathAcl) -> Option<bool> {
    let me = grantees(access);
    let folder = acl.folder.iter().flat_map(|f| f.extra_perms.iter());
    folder
        .chain(acl.item.iter())
        .filter(|(grantee, _)| me.contains(grantee))
        .map(|(_, write)| *write)
        .max()
}

pub fn can_read(access: &Access, path: &str, acl: &PathAcl) -> bool {
    access.is_admin || owns(access, path, acl) || granted(access, acl).is_some()
}

pub fn can_write(access: &Access, path: &str, acl: &PathAcl) -> bool {
    if access.operator {
        return false;
    }
    access.is_admin || owns(access, path, acl) || granted(access, acl) == Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Principal;
    use crate::domain::Username;

    fn access(name: &str, groups: &[&str], admin: bool, operator: bool) -> Access {
        Access {
            principal: Principal::user(format!("{name}@x"), false),
            username: Username::parse(name).unwrap(),
            is_admin: admin,
            operator,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn owners_sharing_and_roles() {
        let alice = access("alice", &["all"], false, false);
        let bob = access("bob", &["all", "ops"], false, false);
        let op = access("op", &["all", "ops"], false, true);
        let admin = access("root", &["all"], true, false);
        let none = PathAcl::default();
        assert!(can_write(&alice, "u/alice/x", &none));
        assert!(!can_read(&bob, "u/alice/x", &none));
        assert!(can_write(&admin, "u/alice/x", &none));

        let shared = PathAcl {
            folder: None,
            item: HashMap::from([("g/ops".to_owned(), false)]),
        };
        assert!(can_read(&bob, "u/alice/x", &shared));
        assert!(!can_write(&bob, "u/alice/x", &shared));
        assert!(can_read(&op, "u/alice/x", &shared));

        let folder = PathAcl {
            folder: Some(FolderAcl {
                owners: vec!["u/alice".into()],
                extra_perms: HashMap::from([
                    ("u/bob".to_owned(), true),
                    ("g/ops".to_owned(), false),
                ]),
            }),
            item: HashMap::new(),
        };
        assert!(can_write(&alice, "f/billing/x", &folder));
        assert!(
            can_write(&bob, "f/billing/x", &folder),
            "write wins over read"
        );
        assert!(can_read(&op, "f/billing/x", &folder));
        assert!(
            !can_write(&op, "f/billing/x", &folder),
            "operators never write"
        );
        assert!(!can_read(
            &access("eve", &["all"], false, false),
            "f/billing/x",
            &folder
        ));
    }
}
