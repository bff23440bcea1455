//! docker-idpb: turn a directory into an OCI image and put it in a registry, with no container runtime.
//!
//! The crate is a pipeline with one direction of flow: a [`walk::Context`] (a directory and its
//! `.dockerignore`) becomes a layer ([`layer`]: tar -> gzip -> sha256, streamed), the layer and the image
//! flags become a config and manifest ([`image`]), and a [`sink::Sink`] stores the result: an OCI layout or
//! docker-loadable tar on disk ([`layout`]) or a registry. [`pipeline`] wires the stages; [`cli`] is the
//! command line on top; [`vcs`] reads the git origin and commit a context was built from, for the image's
//! provenance labels. Each module answers one question and documents its design at its top.

pub mod atomic;
pub mod auth;
pub mod base;
pub mod cache;
pub mod child;
pub mod cli;
pub mod credentials;
pub mod digest;
pub mod error;
pub mod gunzip;
pub mod gzip;
pub mod idpbuilder;
pub mod ignore;
pub mod image;
pub mod layer;
pub mod layout;
pub mod pipeline;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod signal;
pub mod sink;
pub mod store;
pub mod tls;
pub mod vcs;
pub mod walk;
