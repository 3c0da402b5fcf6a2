//! The YANG models of qkdni, compiled into the binary and loaded once into one shared
//! libyang context (through `yang2`, with libyang bundled).
//!
//! Every parse of instance data goes through [`parse_data`] / [`parse_op`]: `yang2` 0.18
//! hands libyang the caller's buffer as a C string without adding a terminating NUL, so
//! these functions copy the text, reject interior NULs and append the terminator.

use std::sync::OnceLock;

use yang2::context::{Context, ContextFlags, EmbeddedModuleKey, EmbeddedModules};
use yang2::data::{DataFormat, DataOperation, DataParserFlags, DataTree, DataValidationFlags};

/// One embedded YANG module.
#[derive(Debug, Clone, Copy)]
pub struct Module {
    pub name: &'static str,
    pub revision: &'static str,
    pub text: &'static str,
}

/// The project's modules, in load order.
pub const MODULES: &[Module] = &[
    Module {
        name: "etsi-qkd-node-types",
        revision: "2022-01-30",
        text: include_str!("../yang/etsi-qkd-node-types.yang"),
    },
    Module {
        name: "etsi-qkd-sdn-node",
        revision: "2022-01-30",
        text: include_str!("../yang/etsi-qkd-sdn-node.yang"),
    },
    Module {
        name: "qkdni-etsi-ids",
        revision: "2026-12-06",
        text: include_str!("../yang/qkdni-etsi-ids.yang"),
    },
    Module {
        name: "qkdni-controller",
        revision: "2026-12-06",
        text: include_str!("../yang/qkdni-controller.yang"),
    },
    Module {
        name: "qkdni-manager",
        revision: "2026-12-08",
        text: include_str!("../yang/qkdni-manager.yang"),
    },
    Module {
        name: "qkdni-km",
        revision: "2026-12-06",
        text: include_str!("../yang/qkdni-km.yang"),
    },
];

/// A data tree of the shared context.
pub type Tree = DataTree<'static>;

/// Errors of the YANG layer.
#[derive(Debug, thiserror::Error)]
pub enum YangError {
    #[error("data contains a NUL character")]
    InteriorNul,
    #[error("{0}")]
    Libyang(#[from] yang2::Error),
}

static CONTEXT: OnceLock<Context> = OnceLock::new();
/// The modules this process implements (all of [`MODULES`] unless a daemon chose).
static SERVED: OnceLock<Vec<&'static str>> = OnceLock::new();

/// The modules of a KM agent (the ETSI GS QKD 015 node model and qkdni's additions).
pub const KM_MODULES: &[&str] = &[
    "etsi-qkd-node-types",
    "etsi-qkd-sdn-node",
    "qkdni-etsi-ids",
    "qkdni-km",
];
/// The modules of a controller.
pub const CONTROLLER_MODULES: &[&str] = &["qkdni-controller"];
/// The modules of a manager.
pub const MANAGER_MODULES: &[&str] = &["qkdni-manager"];

/// Makes this process implement only `names` (a daemon serves its own models: the
/// controller's datastore is not an ETSI node, whose `qkd_node/qkdn_id` is mandatory).
/// Returns false when the context was built already (with whatever it holds).
pub fn serve_only(names: &[&'static str]) -> bool {
    SERVED.set(names.to_vec()).is_ok() && CONTEXT.get().is_none()
}

fn build_context() -> Result<Context, yang2::Error> {
    load(SERVED.get().map(Vec::as_slice))
}

/// A new context implementing every module of qkdni, whatever this process serves (for
/// checking the paths a daemon uses as a client of another's model).
pub fn full_context() -> Result<Context, yang2::Error> {
    load(None)
}

/// A context implementing `served` (all of [`MODULES`] when `None`).
fn load(served: Option<&[&'static str]>) -> Result<Context, yang2::Error> {
    let mut context = Context::new(ContextFlags::DISABLE_SEARCHDIR_CWD)?;
    let mut embedded = EmbeddedModules::new();
    for module in MODULES {
        embedded.insert(
            EmbeddedModuleKey::new(module.name, Some(module.revision), None, None),
            module.text,
        );
    }
    context.set_embedded_modules(&embedded);
    for module in MODULES {
        if served.is_none_or(|names| names.contains(&module.name)) {
            context.load_module(module.name, Some(module.revision), &["*"])?;
        }
    }
    Ok(context)
}

/// The shared libyang context with every qkdni module loaded.
///
/// # Panics
/// If the embedded modules do not compile (a build defect caught by the unit tests).
pub fn context() -> &'static Context {
    CONTEXT.get_or_init(|| build_context().expect("embedded YANG modules compile"))
}

/// The embedded source of module `name` (any revision, or exactly `revision`).
pub fn module_source(name: &str, revision: Option<&str>) -> Option<&'static Module> {
    MODULES
        .iter()
        .find(|m| m.name == name && revision.is_none_or(|r| r.is_empty() || r == m.revision))
}

/// `text` as a NUL-terminated buffer for libyang.
fn c_buffer(text: &str) -> Result<Vec<u8>, YangError> {
    if text.as_bytes().contains(&0) {
        return Err(YangError::InteriorNul);
    }
    let mut buffer = Vec::with_capacity(text.len() + 1);
    buffer.extend_from_slice(text.as_bytes());
    buffer.push(0);
    Ok(buffer)
}

/// Parses (and, unless told not to, validates) instance data.
pub fn parse_data(
    text: &str,
    format: DataFormat,
    parser: DataParserFlags,
    validation: DataValidationFlags,
) -> Result<DataTree<'static>, YangError> {
    let buffer = c_buffer(text)?;
    Ok(DataTree::parse_string(
        context(),
        &buffer,
        format,
        parser,
        validation,
    )?)
}

/// Parses a YANG RPC or notification instance.
pub fn parse_op(
    text: &str,
    format: DataFormat,
    op: DataOperation,
) -> Result<DataTree<'static>, YangError> {
    let buffer = c_buffer(text)?;
    Ok(DataTree::parse_op_string(context(), &buffer, format, op)?)
}

/// The content id of the module set (changes when modules change).
pub fn content_id() -> u16 {
    context().get_module_set_id()
}

/// The `ietf-yang-library` (RFC 8525) data of the context, as libyang generates it.
pub fn yang_library() -> Result<DataTree<'static>, YangError> {
    use yang2::utils::Binding;
    let ctx = context();
    let module = ctx.get_module_latest("ietf-yang-library").ok_or_else(|| {
        YangError::Libyang(yang2::Error {
            errcode: yang2::ffi::LY_ERR::LY_ENOTFOUND,
            msg: Some("ietf-yang-library is not loaded".into()),
            path: None,
            apptag: None,
        })
    })?;
    let format = c"%u";
    let mut root = std::ptr::null_mut();
    // SAFETY: the module belongs to the live shared context; libyang fills `root` with a
    // new tree owned by the returned DataTree, formatting the content id from one u32.
    let ret = unsafe {
        let raw_ctx = (*module.as_raw()).ctx;
        yang2::ffi::ly_ctx_get_yanglib_data(
            raw_ctx,
            &mut root,
            format.as_ptr(),
            u32::from(content_id()),
        )
    };
    if ret != yang2::ffi::LY_ERR::LY_SUCCESS {
        return Err(YangError::Libyang(yang2::Error::new(ctx)));
    }
    // SAFETY: `root` is a tree of this context, handed over to us by libyang.
    Ok(unsafe { DataTree::from_raw(ctx, root) })
}

/// An empty data tree.
pub fn empty() -> DataTree<'static> {
    DataTree::new(context())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yang2::data::Data;

    #[test]
    fn modules_compile_and_are_implemented() {
        let ctx = context();
        for module in MODULES {
            let loaded = ctx
                .get_module(module.name, Some(module.revision))
                .unwrap_or_else(|| panic!("{} not loaded", module.name));
            assert!(loaded.is_implemented());
        }
    }

    #[test]
    fn yang_library_lists_the_modules() {
        let library = yang_library().unwrap();
        let set = library
            .find_xpath("/ietf-yang-library:yang-library/module-set/module/name")
            .unwrap();
        let names: Vec<String> = set.filter_map(|n| n.value_canonical()).collect();
        for module in MODULES {
            assert!(names.iter().any(|n| n == module.name), "{names:?}");
        }
    }

    #[test]
    fn parsing_terminates_the_buffer_and_rejects_interior_nul() {
        let xml =
            "<qkd_node xmlns=\"urn:etsi:qkd:yang:etsi-qkd-node\"><qkdn_id>7eec982d-9ca7-59e0-b252-c124f3522b41</qkdn_id></qkd_node>";
        // Without a terminator libyang would read past the end of this slice.
        let padded = format!("{xml}GARBAGE");
        let tree = parse_data(
            &padded[..xml.len()],
            DataFormat::XML,
            DataParserFlags::STRICT | DataParserFlags::NO_VALIDATION,
            DataValidationFlags::empty(),
        )
        .unwrap();
        let id = tree
            .find_path("/etsi-qkd-sdn-node:qkd_node/qkdn_id")
            .unwrap();
        assert_eq!(
            id.value_canonical().as_deref(),
            Some("7eec982d-9ca7-59e0-b252-c124f3522b41")
        );
        assert!(matches!(
            parse_data(
                "<a/>\0<b/>",
                DataFormat::XML,
                DataParserFlags::empty(),
                DataValidationFlags::empty()
            ),
            Err(YangError::InteriorNul)
        ));
    }
}
