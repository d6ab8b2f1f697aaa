using System.Globalization;

namespace Ferry.Benchmarks;

/// <summary>What every stopwatch case needs: the repository, a Release build of the real binary, invariant formatting.</summary>
internal static class BenchSupport
{
    /// <summary>The repository root (the folder holding Ferry.slnx) above the working directory, or null outside it.</summary>
    public static string? FindRoot()
    {
        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Ferry.slnx")))
            {
                return dir.FullName;
            }
        }
        return null;
    }

    /// <summary>Builds src/Ferry in Release and returns the path of the 'ferry' binary, or null (with the build's output printed).</summary>
    public static async Task<string?> BuildFerryAsync(string root, CancellationToken ct)
    {
        Console.Error.WriteLine("building src/Ferry (Release)");
        var build = await ChildProcess.RunAsync("dotnet", ["build", Path.Combine(root, "src/Ferry"), "-c", "Release", "-nologo", "-v", "q", "-clp:ErrorsOnly"], ct);
        if (build.Code != 0)
        {
            Console.Error.WriteLine(build.Output);
            return null;
        }
        return Path.Combine(root, "src/Ferry/bin/Release/net10.0/ferry");
    }

    public static string Inv(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
