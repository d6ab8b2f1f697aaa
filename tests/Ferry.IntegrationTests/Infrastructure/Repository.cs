namespace Ferry.IntegrationTests.Infrastructure;

/// <summary>The checkout the tests run from, for files that are not built (deploy/, tests/Ferry.ConsoleTests).</summary>
public static class Repository
{
    public static string Root { get; } = Find();

    private static string Find()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Ferry.slnx")))
            {
                return dir.FullName;
            }
        }
        throw new InvalidOperationException("Ferry.slnx not found above the test binaries");
    }
}
