using System.Diagnostics;
using System.Reflection;
using System.Text;

namespace Ferry.IntegrationTests.Infrastructure;

/// <summary>A running 'ferry' process whose output lines can be awaited; killed with its children when disposed.</summary>
public sealed partial class FerryProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly List<string> _lines = [];
    private readonly List<string> _stdout = [];
    private readonly List<string> _stderr = [];
    private readonly Lock _gate = new();
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public static string BinaryPath { get; } = typeof(FerryProcess).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == "FerryBinary").Value!;

    private FerryProcess(Process process, string name)
    {
        _process = process;
        Name = name;
    }

    public string Name { get; }

    public int Id => _process.Id;

    public bool HasExited => _process.HasExited;

    /// <summary>The process's standard input, for commands that read it (ProxyCommand-style pipes).</summary>
    public StreamWriter Input => _process.StandardInput;

    public int ExitCode => _process.ExitCode;

    public string Output
    {
        get
        {
            lock (_gate)
            {
                return string.Join('\n', _lines);
            }
        }
    }

    public string Stdout
    {
        get
        {
            lock (_gate)
            {
                return string.Join('\n', _stdout);
            }
        }
    }

    public string Stderr
    {
        get
        {
            lock (_gate)
            {
                return string.Join('\n', _stderr);
            }
        }
    }

    /// <summary>Starts 'ferry' with <paramref name="args"/>, inside network namespace <paramref name="netns"/> when given.</summary>
    public static FerryProcess Start(string name, IEnumerable<string> args, IDictionary<string, string?>? env = null, string? workingDirectory = null, string? netns = null)
    {
        // 'ip netns exec' execs the program after entering the namespace, so the PID is ferry's own and kill reaches it.
        var info = new ProcessStartInfo(netns is null ? BinaryPath : "ip")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? Path.GetTempPath(),
        };
        if (netns is not null)
        {
            foreach (var arg in new[] { "netns", "exec", netns, BinaryPath })
            {
                info.ArgumentList.Add(arg);
            }
        }
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }
        // Tests must not inherit an operator's settings.
        foreach (var key in new[] { "FERRY_CONTROLLER", "FERRY_API_KEY", "FERRY_CONTROLLER_FINGERPRINT", "FERRY_ACCESS_TOKEN", "FERRY_REFRESH_TOKEN", "FERRY_PASSWORD", "FERRY_METRICS_LISTEN", "FERRY_CLIENT_STATE", "FERRY_CONNECTOR_STATE", "FERRY_RELAY_STATE" })
        {
            info.Environment.Remove(key);
        }
        // Connectors and relays serve a control socket in their state folder (~/.ferry/<kind> by default), and refuse to
        // start beside another one there: each test daemon gets a folder of its own unless the test names one.
        var first = netns is null ? 0 : 4;
        if (info.ArgumentList.Count > first && info.ArgumentList[first] is "connector" or "relay" && !info.ArgumentList.Contains("--state"))
        {
            info.Environment[$"FERRY_{info.ArgumentList[first].ToUpperInvariant()}_STATE"] = Directory.CreateTempSubdirectory($"ferry-{info.ArgumentList[first]}-").FullName;
        }
        foreach (var (key, value) in env ?? new Dictionary<string, string?>())
        {
            info.Environment[key] = value;
        }
        var process = new Process { StartInfo = info, EnableRaisingEvents = true };
        var result = new FerryProcess(process, name);
        process.OutputDataReceived += (_, e) => result.Add(e.Data, error: false);
        process.ErrorDataReceived += (_, e) => result.Add(e.Data, error: true);
        process.Exited += (_, _) => result.Signal();
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return result;
    }

    private void Add(string? line, bool error)
    {
        if (line is null)
        {
            return;
        }
        lock (_gate)
        {
            _lines.Add(line);
            (error ? _stderr : _stdout).Add(line);
        }
        Signal();
    }

    private void Signal()
    {
        TaskCompletionSource old;
        lock (_gate)
        {
            old = _changed;
            _changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        old.TrySetResult();
    }

    /// <summary>Waits until a line matches, failing with the output so far if it does not appear in time or the process exits first.</summary>
    public async Task<string> WaitForLineAsync(Func<string, bool> match, TimeSpan timeout, string what)
    {
        using var cts = new CancellationTokenSource(timeout);
        while (true)
        {
            Task changed;
            lock (_gate)
            {
                var found = _lines.FirstOrDefault(match);
                if (found is not null)
                {
                    return found;
                }
                changed = _changed.Task;
            }
            if (_process.HasExited)
            {
                // Output may still be draining after exit; one last look.
                await _process.WaitForExitAsync(CancellationToken.None);
                lock (_gate)
                {
                    var found = _lines.FirstOrDefault(match);
                    if (found is not null)
                    {
                        return found;
                    }
                }
                throw new Xunit.Sdk.XunitException($"{Name} exited ({_process.ExitCode}) before {what}. Output:\n{Output}");
            }
            try
            {
                await changed.WaitAsync(cts.Token);
            }
            catch (OperationCanceledException)
            {
                throw new Xunit.Sdk.XunitException($"{Name}: no {what} within {timeout.TotalSeconds:0} s. Output:\n{Output}");
            }
        }
    }

    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await _process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            throw new Xunit.Sdk.XunitException($"{Name} did not exit within {timeout.TotalSeconds:0} s. Output:\n{Output}");
        }
        return _process.ExitCode;
    }

    /// <summary>SIGKILL: the process gets no chance to say goodbye, as in a crash.</summary>
    public void Kill()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
        }
    }

    /// <summary>Sends a POSIX signal (SIGSTOP freezes the process with its sockets open; SIGTERM asks it to stop).</summary>
    public void Send(UnixSignal signal) => _ = Interop.Kill(_process.Id, (int)signal);

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited)
            {
                Send(UnixSignal.Continue);
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync(new CancellationTokenSource(TimeSpan.FromSeconds(10)).Token);
            }
        }
        catch (Exception e) when (e is InvalidOperationException or OperationCanceledException)
        {
        }
        _process.Dispose();
    }

    private static partial class Interop
    {
        [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "kill")]
        public static partial int Kill(int pid, int signal);
    }
}

/// <summary>Linux signal numbers the tests send.</summary>
public enum UnixSignal
{
    Terminate = 15,
    Continue = 18,
    /// <summary>SIGSTOP: freezes the process with its sockets open, as a hung host would.</summary>
    Stop = 19,
}

/// <summary>A finished one-shot command ('ferry' or another program).</summary>
public sealed record CommandResult(int ExitCode, string Stdout, string Stderr)
{
    public override string ToString() => $"exit {ExitCode}\nstdout:\n{Stdout}\nstderr:\n{Stderr}";
}

/// <summary>Runs one-shot 'ferry' commands (the admin CLI) to completion.</summary>
public static class FerryCli
{
    public static async Task<CommandResult> RunAsync(IEnumerable<string> args, IDictionary<string, string?>? env = null, TimeSpan? timeout = null, string? netns = null)
    {
        await using var process = FerryProcess.Start("ferry " + string.Join(' ', args.Take(3)), args, env, netns: netns);
        var code = await process.WaitForExitAsync(timeout ?? TimeSpan.FromSeconds(60));
        return new CommandResult(code, process.Stdout, process.Stderr);
    }
}

/// <summary>Runs other programs (ssh, curl, ip, iptables) to completion.</summary>
public static class ExternalProcess
{
    /// <summary>Runs a command with no input and returns its exit code and output whatever they are; it is killed after <paramref name="timeout"/>.</summary>
    public static async Task<CommandResult> CaptureAsync(string file, string[] args, TimeSpan timeout, CancellationToken ct)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }
        return await CaptureAsync(info, timeout, ct);
    }

    /// <summary>Runs <paramref name="info"/> (its folder and environment as set) like <see cref="CaptureAsync(string, string[], TimeSpan, CancellationToken)"/>.</summary>
    public static async Task<CommandResult> CaptureAsync(ProcessStartInfo info, TimeSpan timeout, CancellationToken ct)
    {
        info.RedirectStandardOutput = info.RedirectStandardError = info.RedirectStandardInput = true;
        info.UseShellExecute = false;
        using var process = Process.Start(info)!;
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync(ct);
        var stderr = process.StandardError.ReadToEndAsync(ct);
        using var bound = CancellationTokenSource.CreateLinkedTokenSource(ct);
        bound.CancelAfter(timeout);
        try
        {
            await process.WaitForExitAsync(bound.Token);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            process.Kill(entireProcessTree: true);
            throw new Xunit.Sdk.XunitException($"{info.FileName} {string.Join(' ', info.ArgumentList)} did not finish within {timeout.TotalSeconds:0} s");
        }
        return new CommandResult(process.ExitCode, await stdout, await stderr);
    }
}
