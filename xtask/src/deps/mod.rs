//! The dependencies an offline build is handed: the Python wheelhouse, the npm cache (as
//! a folder and as an image), and the optional `node_modules` archive. Each module
//! fetches or packs on the export side and checks or unpacks on the import side.

pub mod node_modules;
pub mod npm_cache;
pub mod npm_image;
pub mod wheelhouse;
