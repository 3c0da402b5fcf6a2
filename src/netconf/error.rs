//! NETCONF `rpc-error` (RFC 6241 section 4.3 and appendix A).

use std::fmt::Write;

use quick_xml::escape::escape;

/// `error-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Transport,
    Rpc,
    Protocol,
    Application,
}

impl ErrorType {
    fn as_str(self) -> &'static str {
        match self {
            ErrorType::Transport => "transport",
            ErrorType::Rpc => "rpc",
            ErrorType::Protocol => "protocol",
            ErrorType::Application => "application",
        }
    }
}

/// `error-tag` values of RFC 6241 appendix A.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorTag {
    InUse,
    InvalidValue,
    TooBig,
    MissingAttribute,
    BadAttribute,
    UnknownAttribute,
    MissingElement,
    BadElement,
    UnknownElement,
    UnknownNamespace,
    AccessDenied,
    LockDenied,
    ResourceDenied,
    RollbackFailed,
    DataExists,
    DataMissing,
    OperationNotSupported,
    OperationFailed,
    MalformedMessage,
}

impl ErrorTag {
    /// The tag as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorTag::InUse => "in-use",
            ErrorTag::InvalidValue => "invalid-value",
            ErrorTag::TooBig => "too-big",
            ErrorTag::MissingAttribute => "missing-attribute",
            ErrorTag::BadAttribute => "bad-attribute",
            ErrorTag::UnknownAttribute => "unknown-attribute",
            ErrorTag::MissingElement => "missing-element",
            ErrorTag::BadElement => "bad-element",
            ErrorTag::UnknownElement => "unknown-element",
            ErrorTag::UnknownNamespace => "unknown-namespace",
            ErrorTag::AccessDenied => "access-denied",
            ErrorTag::LockDenied => "lock-denied",
            ErrorTag::ResourceDenied => "resource-denied",
            ErrorTag::RollbackFailed => "rollback-failed",
            ErrorTag::DataExists => "data-exists",
            ErrorTag::DataMissing => "data-missing",
            ErrorTag::OperationNotSupported => "operation-not-supported",
            ErrorTag::OperationFailed => "operation-failed",
            ErrorTag::MalformedMessage => "malformed-message",
        }
    }

    /// Parses a wire tag.
    pub fn parse(tag: &str) -> Option<Self> {
        use ErrorTag::*;
        [
            InUse,
            InvalidValue,
            TooBig,
            MissingAttribute,
            BadAttribute,
            UnknownAttribute,
            MissingElement,
            BadElement,
            UnknownElement,
            UnknownNamespace,
            AccessDenied,
            LockDenied,
            ResourceDenied,
            RollbackFailed,
            DataExists,
            DataMissing,
            OperationNotSupported,
            OperationFailed,
            MalformedMessage,
        ]
        .into_iter()
        .find(|t| t.as_str() == tag)
    }
}

/// One `rpc-error`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{} {}: {}", error_type.as_str(), tag.as_str(), message)]
pub struct RpcError {
    pub error_type: ErrorType,
    pub tag: ErrorTag,
    /// `error-app-tag`.
    pub app_tag: Option<String>,
    /// `error-path` (an XPath to the offending node).
    pub path: Option<String>,
    /// `error-message`.
    pub message: String,
    /// `error-info` children as (element name, text), e.g. `bad-element`, `session-id`.
    pub info: Vec<(String, String)>,
}

impl RpcError {
    /// An error of `error_type` with `tag`.
    pub fn new(error_type: ErrorType, tag: ErrorTag, message: impl Into<String>) -> Self {
        Self {
            error_type,
            tag,
            app_tag: None,
            path: None,
            message: message.into(),
            info: Vec::new(),
        }
    }

    /// A protocol error.
    pub fn protocol(tag: ErrorTag, message: impl Into<String>) -> Self {
        Self::new(ErrorType::Protocol, tag, message)
    }

    /// An application error.
    pub fn application(tag: ErrorTag, message: impl Into<String>) -> Self {
        Self::new(ErrorType::Application, tag, message)
    }

    /// Adds an `error-info` child.
    pub fn info(mut self, name: &str, value: impl Into<String>) -> Self {
        self.info.push((name.to_owned(), value.into()));
        self
    }

    /// Sets `error-path`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Sets `error-app-tag`.
    pub fn app_tag(mut self, tag: impl Into<String>) -> Self {
        self.app_tag = Some(tag.into());
        self
    }

    /// The `<rpc-error>` element.
    pub fn to_xml(&self) -> String {
        let mut xml = String::from("<rpc-error>");
        let _ = write!(xml, "<error-type>{}</error-type>", self.error_type.as_str());
        let _ = write!(xml, "<error-tag>{}</error-tag>", self.tag.as_str());
        xml.push_str("<error-severity>error</error-severity>");
        if let Some(app_tag) = &self.app_tag {
            let _ = write!(
                xml,
                "<error-app-tag>{}</error-app-tag>",
                escape(app_tag.as_str())
            );
        }
        if let Some(path) = &self.path {
            let _ = write!(xml, "<error-path>{}</error-path>", escape(path.as_str()));
        }
        let _ = write!(
            xml,
            "<error-message xml:lang=\"en\">{}</error-message>",
            escape(self.message.as_str())
        );
        if !self.info.is_empty() {
            xml.push_str("<error-info>");
            for (name, value) in &self.info {
                let _ = write!(xml, "<{name}>{}</{name}>", escape(value.as_str()));
            }
            xml.push_str("</error-info>");
        }
        xml.push_str("</rpc-error>");
        xml
    }
}

impl From<yang2::Error> for RpcError {
    /// A libyang failure as an `rpc-error`; validation failures get the error-tag RFC 7950
    /// section 15 gives their error-app-tag.
    fn from(e: yang2::Error) -> Self {
        let tag = match e.apptag.as_deref() {
            Some(
                "must-violation" | "data-not-unique" | "too-many-elements" | "too-few-elements",
            ) => ErrorTag::OperationFailed,
            Some("instance-required" | "missing-choice") => ErrorTag::DataMissing,
            _ => ErrorTag::InvalidValue,
        };
        let mut error = RpcError::application(
            tag,
            e.msg.clone().unwrap_or_else(|| format!("{:?}", e.errcode)),
        );
        if let Some(path) = e.path.clone() {
            error = error.path(path);
        }
        if let Some(tag) = e.apptag.clone() {
            error = error.app_tag(tag);
        }
        error
    }
}
