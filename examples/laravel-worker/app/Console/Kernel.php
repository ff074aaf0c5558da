<?php

namespace App\Console;

use Illuminate\Foundation\Console\Kernel as ConsoleKernel;

class Kernel extends ConsoleKernel
{
    /** Listed rather than discovered: discovery reads composer.json, which this example has not. */
    protected $commands = [
        Commands\ProcessChatStream::class,
    ];
}
