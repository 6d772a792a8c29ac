//! Image files: decoding with the file named in every error, and directory listings.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::{ImageReader, RgbImage};

/// File extensions the inference tools pick up (the reference's list, compared
/// case-insensitively). This build decodes JPEG and PNG; files of the other formats are listed
/// but fail to decode with an error naming the file.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp",
];

/// Decodes an image file into 8-bit RGB (PIL's `convert("RGB")`). The format is detected from
/// the content, not the extension. Errors name the file.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let reader = ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?;
    let decoded = reader
        .decode()
        .with_context(|| format!("cannot decode image {}", path.display()))?;
    Ok(decoded.into_rgb8())
}

/// One image found by [`list_images`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedImage {
    /// Image file.
    pub path: PathBuf,
    /// With `in_subfolders`, the name of the class folder (ImageFolder-style); otherwise `None`.
    pub class: Option<String>,
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = fs::read_dir(dir)
        .with_context(|| format!("cannot list directory {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list directory {}", dir.display()))?;
    entries.sort();
    Ok(entries)
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Lists the images of `root` the way the reference's inference tools do (`ImageDataset` of
/// [`inference/inference_utils.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/inference/inference_utils.py#L67), or torchvision's
/// `ImageFolder`).
///
/// * `root` is an image file: that one file.
/// * `in_subfolders == false`: the direct children of `root` with an image extension
///   ([`IMAGE_EXTENSIONS`], case-insensitive).
/// * `in_subfolders == true`: torchvision `ImageFolder`: every sub-directory of `root` is a class
///   (classes sorted by name), holding images at any depth; [`ListedImage::class`] is the folder
///   name.
///
/// Deviation: the reference lists direct children in `os.listdir` order (file-system order);
/// here they are sorted by name so results do not depend on the file system. Hidden files
/// (names starting with `.`) are skipped. Errors: `root` missing, or no image found.
pub fn list_images(root: &Path, in_subfolders: bool) -> Result<Vec<ListedImage>> {
    if root.is_file() {
        return Ok(vec![ListedImage {
            path: root.to_path_buf(),
            class: None,
        }]);
    }
    if !root.is_dir() {
        bail!(
            "image directory {} does not exist (or is not a directory)",
            root.display()
        );
    }
    let mut out = Vec::new();
    if in_subfolders {
        for class_dir in sorted_entries(root)? {
            if !class_dir.is_dir() || is_hidden(&class_dir) {
                continue;
            }
            let class = class_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut stack = vec![class_dir];
            let mut files = Vec::new();
            while let Some(dir) = stack.pop() {
                for path in sorted_entries(&dir)? {
                    if is_hidden(&path) {
                        continue;
                    }
                    if path.is_dir() {
                        stack.push(path);
                    } else if has_image_extension(&path) {
                        files.push(path);
                    }
                }
            }
            files.sort();
            out.extend(files.into_iter().map(|path| ListedImage {
                path,
                class: Some(class.clone()),
            }));
        }
    } else {
        for path in sorted_entries(root)? {
            if path.is_file() && !is_hidden(&path) && has_image_extension(&path) {
                out.push(ListedImage { path, class: None });
            }
        }
    }
    if out.is_empty() {
        bail!(
            "no images ({}) found in {}{}",
            IMAGE_EXTENSIONS.join(", "),
            root.display(),
            if in_subfolders {
                " (looked in class sub-folders)"
            } else {
                ""
            }
        );
    }
    Ok(out)
}

/// The `*.jpg` files directly inside `dir` (the reference's `glob(<dir>/*.jpg)`: case-sensitive,
/// hidden files excluded), sorted by file name.
pub(crate) fn list_jpgs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = sorted_entries(dir)?
        .into_iter()
        .filter(|p| !is_hidden(p) && p.extension().is_some_and(|e| e == "jpg") && p.is_file())
        .collect();
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}
