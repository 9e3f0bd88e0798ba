//! Which paths `--reload` cares about: the include and exclude glob
//! patterns, and the directories never worth an inotify watch.

use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Directories never watched, whatever the patterns: they hold no source of
/// the app, and can hold thousands of directories, each an inotify watch.
/// `site-packages` (`dist-packages` on Debian) is where a virtual
/// environment's packages go: a `pip install` there is no change to the app,
/// even in an environment not (yet) known as one by [`VENV_MARKER`].
const NEVER_WATCHED_DIRS: &[&str] = &[
    "__pycache__",
    "node_modules",
    "site-packages",
    "dist-packages",
];

/// A directory holding this file is a virtual environment (PEP 405):
/// installed packages, not the app, so nothing below it counts, even when it
/// is not hidden. `python -m venv` writes it after making the environment's
/// directories, which may be watched by then: every directory between the
/// watched one and a path is checked, not only the path's own.
const VENV_MARKER: &str = "pyvenv.cfg";

/// Compiled glob patterns, matched like uvicorn's `Path.match`: a pattern
/// without '/' matches the last component; one with '/' matches the last
/// components of the path relative to the watched directory (`static/*.js`
/// matches `app/static/x.js`). uvicorn matches against the absolute path, so
/// there `app/*` also catches every file of a tree watched at `/srv/app`;
/// relative paths keep a pattern about the tree, wherever it lives. An
/// absolute pattern matches the absolute path. `*` never crosses '/'.
struct Patterns {
    names: GlobSet,
    relative: GlobSet,
    absolute: GlobSet,
}

impl Patterns {
    fn new(patterns: &[String], option: &str) -> Result<Self, String> {
        let mut sets = [
            GlobSetBuilder::new(),
            GlobSetBuilder::new(),
            GlobSetBuilder::new(),
        ];
        for pattern in patterns {
            // `build/` and `./build` mean the directory `build`.
            let trimmed = pattern.trim_end_matches('/');
            let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
            let (set, glob) = if trimmed.starts_with('/') {
                (2, trimmed.to_string())
            } else if trimmed.contains('/') {
                (1, format!("**/{trimmed}"))
            } else {
                (0, trimmed.to_string())
            };
            let glob = GlobBuilder::new(&glob)
                .literal_separator(true)
                .build()
                .map_err(|err| format!("{option} {pattern:?}: {err}"))?;
            sets[set].add(glob);
        }
        let [names, relative, absolute] =
            sets.map(|set| set.build().map_err(|err| format!("{option}: {err}")));
        Ok(Self {
            names: names?,
            relative: relative?,
            absolute: absolute?,
        })
    }

    /// Whether `rel`, a path below the watched directory `root`, matches.
    fn matches(&self, root: &Path, rel: &Path) -> bool {
        rel.file_name()
            .is_some_and(|name| self.names.is_match(name))
            || self.relative.is_match(rel)
            || (!self.absolute.is_empty() && self.absolute.is_match(root.join(rel)))
    }
}

/// Decides which paths matter; shared by notify's thread and tree walks.
pub(super) struct Filter {
    /// The watched directories, canonical, as notify reports paths under them.
    pub(super) roots: Vec<PathBuf>,
    include: Patterns,
    exclude: Patterns,
    /// Include patterns without wildcards name one file, which wins over an
    /// exclude pattern on its name as in uvicorn: `--reload-include .env`.
    literal_includes: Vec<String>,
}

impl Filter {
    /// Compiles the patterns; an Err is one line naming the bad one.
    pub(super) fn new(
        roots: Vec<PathBuf>,
        include: &[String],
        exclude: &[String],
    ) -> Result<Self, String> {
        Ok(Self {
            roots,
            include: Patterns::new(include, "--reload-include")?,
            exclude: Patterns::new(exclude, "--reload-exclude")?,
            literal_includes: (include.iter())
                .filter(|p| !p.contains(['*', '?', '[', '{', '/']))
                .cloned()
                .collect(),
        })
    }

    /// The watched directory holding `path` (the deepest, when they nest)
    /// and the path below it.
    fn locate<'p>(&self, path: &'p Path) -> Option<(&Path, &'p Path)> {
        (self.roots.iter())
            .filter_map(|root| Some((root.as_path(), path.strip_prefix(root).ok()?)))
            .min_by_key(|(_, rel)| rel.components().count())
    }

    /// Whether `rel` itself is excluded by name or by path.
    fn excludes(&self, root: &Path, rel: &Path) -> bool {
        let never =
            (rel.file_name()).is_some_and(|name| NEVER_WATCHED_DIRS.iter().any(|dir| name == *dir));
        never || self.exclude.matches(root, rel)
    }

    /// Whether `rel` or a directory between it and `root` is excluded: every
    /// component is checked, so nothing under `.git` or `.venv` counts.
    fn excludes_any(&self, root: &Path, rel: &Path) -> bool {
        (rel.ancestors())
            .take_while(|dir| !dir.as_os_str().is_empty())
            .any(|dir| self.excludes(root, dir))
    }

    /// Whether a change to the file at `path` should restart the worker.
    pub(super) fn wants(&self, path: &Path) -> bool {
        let Some((root, rel)) = self.locate(path) else {
            return false;
        };
        let (Some(name), Some(parent)) = (rel.file_name(), rel.parent()) else {
            return false;
        };
        let literal = self.literal_includes.iter().any(|l| name == l.as_str());
        self.include.matches(root, rel)
            && !self.excludes_any(root, parent)
            && (literal || !self.excludes(root, rel))
            && !in_venv(root, parent)
    }

    /// [`wants`](Self::wants) for a file in a directory that
    /// [`watches_dir`](Self::watches_dir) kept, or a watched one: what it
    /// checked of the directories above is not checked again, which would
    /// look for a `pyvenv.cfg` in each of them for each file.
    pub(super) fn wants_in_kept_dir(&self, path: &Path) -> bool {
        let Some((root, rel)) = self.locate(path) else {
            return false;
        };
        let Some(name) = rel.file_name() else {
            return false;
        };
        let literal = self.literal_includes.iter().any(|l| name == l.as_str());
        self.include.matches(root, rel) && (literal || !self.excludes(root, rel))
    }

    /// Whether the directory at `path`, below a watched one, gets a watch.
    pub(super) fn watches_dir(&self, path: &Path) -> bool {
        self.locate(path)
            .is_some_and(|(root, rel)| !self.excludes_any(root, rel) && !in_venv(root, rel))
    }
}

/// Whether `rel` or a directory between it and `root` holds [`VENV_MARKER`].
/// `root` itself does not count: a project made a virtual environment of
/// (`python -m venv .`) is still watched, its `site-packages` excepted.
fn in_venv(root: &Path, rel: &Path) -> bool {
    (rel.ancestors())
        .take_while(|dir| !dir.as_os_str().is_empty())
        .any(|dir| root.join(dir).join(VENV_MARKER).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str]) -> Filter {
        let strings =
            |patterns: &[&str]| patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let roots = vec![PathBuf::from("/srv/app")];
        Filter::new(roots, &strings(include), &strings(exclude)).expect("filter")
    }

    #[test]
    fn a_pattern_without_a_slash_matches_the_file_name() {
        let filter = filter(&["*.py"], &["*_test.py"]);
        assert!(filter.wants(Path::new("/srv/app/shop/views.py")));
        assert!(!filter.wants(Path::new("/srv/app/shop/views_test.py")));
        assert!(!filter.wants(Path::new("/srv/app/shop/views.txt")));
    }

    #[test]
    fn a_pattern_with_a_slash_matches_the_end_of_the_relative_path() {
        let filter = filter(&["templates/*.html"], &["/srv/app/vendor"]);
        assert!(filter.wants(Path::new("/srv/app/templates/cart.html")));
        assert!(filter.wants(Path::new("/srv/app/shop/templates/cart.html")));
        assert!(!filter.wants(Path::new("/srv/app/templates/shop/cart.html")));
        assert!(!filter.wants(Path::new("/srv/app/vendor/templates/cart.html")));
    }

    #[test]
    fn an_excluded_directory_excludes_everything_below_it() {
        let filter = filter(&["*.py"], &[".*", "build/"]);
        assert!(!filter.wants(Path::new("/srv/app/.venv/lib/site.py")));
        assert!(!filter.wants(Path::new("/srv/app/build/lib/views.py")));
        assert!(!filter.wants(Path::new("/srv/app/node_modules/x/gyp.py")));
        assert!(!filter.watches_dir(Path::new("/srv/app/shop/__pycache__")));
        assert!(!filter.watches_dir(Path::new("/srv/app/env/lib/python3.12/site-packages")));
        assert!(!filter.wants(Path::new("/srv/app/env/lib/python3/dist-packages/x/y.py")));
        assert!(filter.watches_dir(Path::new("/srv/app/shop")));
    }

    #[test]
    fn a_literal_include_wins_over_an_exclude_on_its_name() {
        let filter = filter(&["*.py", ".env"], &[".*"]);
        assert!(filter.wants(Path::new("/srv/app/.env")));
        assert!(!filter.wants(Path::new("/srv/app/.hidden.py")));
    }

    #[test]
    fn in_a_kept_directory_a_file_is_wanted_as_anywhere() {
        let filter = filter(&["*.py", ".env", "templates/*.html"], &[".*", "*_test.py"]);
        for path in [
            "/srv/app/views.py",
            "/srv/app/shop/views.py",
            "/srv/app/shop/views_test.py",
            "/srv/app/.env",
            "/srv/app/.hidden.py",
            "/srv/app/notes.txt",
            "/srv/app/shop/templates/cart.html",
            "/srv/other/views.py",
        ] {
            let path = Path::new(path);
            assert_eq!(
                filter.wants_in_kept_dir(path),
                filter.wants(path),
                "{path:?}"
            );
        }
    }

    #[test]
    fn paths_outside_the_watched_directories_are_not_wanted() {
        assert!(!filter(&["*.py"], &[]).wants(Path::new("/srv/other/views.py")));
    }
}
