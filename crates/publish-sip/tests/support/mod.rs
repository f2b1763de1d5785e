pub mod watcher;
