using System.Text;

namespace Ferry.Core.Files;

/// <summary>Writes files so that a reader sees either the old content or the new, never a half-written one.</summary>
public static class AtomicFile
{
    /// <summary>Writes <paramref name="content"/> to a temporary file beside <paramref name="path"/>, flushes it to disk, then renames it over the target.</summary>
    public static void WriteAllText(string path, string content, bool ownerOnly)
    {
        var full = Path.GetFullPath(path);
        var dir = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(dir);
        RemoveStaleTemporaries(dir, Path.GetFileName(full));
        var temp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            var options = new FileStreamOptions
            {
                Mode = FileMode.CreateNew,
                Access = FileAccess.Write,
                Share = FileShare.None,
            };
            if (ownerOnly && !OperatingSystem.IsWindows())
            {
                // Created 0600 from the start, so a secret is never readable by others even for an instant.
                options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
            }
            using (var stream = new FileStream(temp, options))
            {
                var bytes = Encoding.UTF8.GetBytes(content);
                stream.Write(bytes);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
            FsyncDirectory(dir);
        }
        finally
        {
            if (File.Exists(temp))
            {
                File.Delete(temp);
            }
        }
    }

    /// <summary>
    /// Deletes temporary files of <paramref name="name"/> left by writers killed before their rename (a daemon killed -9
    /// mid-rotation): half-written secrets that nothing reads. A live writer's file, or this process's own, is left alone.
    /// </summary>
    private static void RemoveStaleTemporaries(string dir, string name)
    {
        var prefix = $".{name}.";
        foreach (var file in Directory.EnumerateFiles(dir, $"{prefix}*.tmp"))
        {
            var rest = Path.GetFileName(file)[prefix.Length..];
            var dot = rest.IndexOf('.', StringComparison.Ordinal);
            if (dot <= 0 || !int.TryParse(rest.AsSpan(0, dot), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var pid)
                || pid == Environment.ProcessId || IsRunning(pid))
            {
                continue;
            }
            try
            {
                File.Delete(file);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Someone else's file or a read-only folder: it does no harm where it is.
            }
        }
    }

    private static bool IsRunning(int pid)
    {
        try
        {
            using var process = System.Diagnostics.Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException)
        {
            return false;
        }
    }

    private static void FsyncDirectory(string dir)
    {
        if (OperatingSystem.IsWindows())
        {
            return;
        }
        // The rename is durable only once the directory entry is on disk.
        try
        {
            using var handle = File.OpenHandle(dir, FileMode.Open, FileAccess.Read);
            RandomAccess.FlushToDisk(handle);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Some file systems refuse to open directories; the data itself was already flushed.
        }
    }
}
