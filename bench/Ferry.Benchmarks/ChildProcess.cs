using System.Diagnostics;
using System.Text;

namespace Ferry.Benchmarks;

/// <summary>A benchmark's child process (with its id, for /proc) whose output lines are kept, so the bench can wait for one; killed with its tree on dispose.</summary>
internal sealed class ChildProcess : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private readonly List<string> _problems = [];
    private readonly Queue<string> _tail = new();

    private ChildProcess(Process process, string name)
    {
        _process = process;
        Name = name;
        Pid = process.Id;
        _process.OutputDataReceived += (_, e) => Append(e.Data);
        _process.ErrorDataReceived += (_, e) => Append(e.Data);
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    public int Pid { get; }

    public string Name { get; }

    public string Output
    {
        get
        {
            lock (_output)
            {
                return _output.ToString();
            }
        }
    }

    private void Append(string? line)
    {
        if (line is null)
        {
            return;
        }
        lock (_output)
        {
            // A daemon logs a line per flow: keep the start (where the lines waited for are), and later only warnings and worse.
            if (_output.Length < 1 << 20)
            {
                _output.AppendLine(line);
            }
            _tail.Enqueue(line);
            if (_tail.Count > 60)
            {
                _tail.Dequeue();
            }
            if (IsProblem(line) && _problems.Count < 10_000)
            {
                _problems.Add(line);
            }
        }
    }

    // Warnings and worse, and the per-flow lines that say a flow did not work (logged at information level: a refusal is a normal
    // event for a daemon, but in a benchmark where every flow is allowed it is a failure to explain).
    private static bool IsProblem(string line)
        => line.Contains(" warn: ", StringComparison.Ordinal) || line.Contains(" fail: ", StringComparison.Ordinal) || line.Contains(" crit: ", StringComparison.Ordinal)
            || line.Contains(" refused: ", StringComparison.Ordinal) || line.Contains(" broke: ", StringComparison.Ordinal)
            || (line.Contains(" closed (", StringComparison.Ordinal) && !line.Contains(" closed (None)", StringComparison.Ordinal));

    /// <summary>Null while running; otherwise the exit code and the last lines printed (an unhandled exception's trace among them).</summary>
    public string? Exited
    {
        get
        {
            if (!_process.HasExited)
            {
                return null;
            }
            lock (_output)
            {
                return $"exited with code {_process.ExitCode}; last lines:\n  {string.Join("\n  ", _tail)}";
            }
        }
    }

    /// <summary>The warnings, errors and critical lines the process logged (the first 10 000).</summary>
    public IReadOnlyList<string> Problems
    {
        get
        {
            lock (_output)
            {
                return [.. _problems];
            }
        }
    }

    public static ChildProcess Start(string file, string[] args, IDictionary<string, string>? env = null, string? name = null)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }
        foreach (var (k, v) in env ?? new Dictionary<string, string>())
        {
            info.Environment[k] = v;
        }
        return new ChildProcess(Process.Start(info)!, name ?? Path.GetFileName(file));
    }

    public static async Task<(int Code, string Output)> RunAsync(string file, string[] args, CancellationToken ct, IDictionary<string, string>? env = null)
    {
        using var p = Start(file, args, env);
        await p._process.WaitForExitAsync(ct).WaitAsync(TimeSpan.FromMinutes(5), ct);
        p._process.WaitForExit();
        return (p._process.ExitCode, p.Output);
    }

    /// <summary>The first line containing <paramref name="text"/>, waited for up to 60 s.</summary>
    public async Task<string> WaitForLineAsync(string text, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (DateTime.UtcNow < deadline)
        {
            if (Output.Split('\n').FirstOrDefault(l => l.Contains(text, StringComparison.Ordinal)) is { } line)
            {
                return line.TrimEnd('\r');
            }
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"{_process.StartInfo.FileName} exited before printing '{text}':\n{Output}");
            }
            await Task.Delay(50, ct);
        }
        throw new TimeoutException($"{_process.StartInfo.FileName} did not print '{text}' within 60 s:\n{Output}");
    }

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                _process.WaitForExit(5000);
            }
        }
        catch (InvalidOperationException)
        {
            // Already gone.
        }
        _process.Dispose();
    }
}
