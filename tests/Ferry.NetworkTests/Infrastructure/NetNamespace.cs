using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Ferry.NetworkTests.Infrastructure;

/// <summary>
/// Creates sockets inside a named network namespace from this process. A socket belongs for its whole life to the
/// namespace of the thread that created it, so a throw-away thread enters the namespace, runs the factory and ends;
/// the rest of the process (and the thread pool) never changes namespace.
/// </summary>
internal static partial class NetNamespace
{
    private const int CloneNewNet = 0x40000000;

    public static T Create<T>(string name, Func<T> factory)
    {
        T? result = default;
        ExceptionDispatchInfo? error = null;
        var thread = new Thread(() =>
        {
            try
            {
                using var ns = File.OpenHandle($"/var/run/netns/{name}", FileMode.Open, FileAccess.Read);
                if (SetNs(ns, CloneNewNet) != 0)
                {
                    throw new IOException($"setns({name}) failed with errno {Marshal.GetLastPInvokeError()}");
                }

                result = factory();
            }
#pragma warning disable CA1031 // Handed to the calling thread below.
            catch (Exception e)
#pragma warning restore CA1031
            {
                error = ExceptionDispatchInfo.Capture(e);
            }
        })
        { IsBackground = true, Name = $"netns {name}" };
        thread.Start();
        if (!thread.Join(TimeSpan.FromSeconds(30)))
        {
            throw new TimeoutException($"creating a socket in namespace {name} did not finish within 30 s");
        }

        error?.Throw();
        return result!;
    }

    [LibraryImport("libc.so.6", EntryPoint = "setns", SetLastError = true)]
    [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
    private static partial int SetNs(SafeFileHandle fd, int nstype);
}
